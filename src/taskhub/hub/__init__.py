"""The hub: wires the pure lifecycle to transports (WebSocket, HTTP) and to a store."""
