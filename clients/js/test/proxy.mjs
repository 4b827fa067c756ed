// A recording proxy for the tests that check what a real hub sends a client: a WebSocket server
// on loopback that passes every frame through to the hub and back, and keeps the messages the
// hub sent (parsed) in `fromHub`.
import WebSocket, { WebSocketServer } from 'ws';

const msgs = (data) => { const m = JSON.parse(data.toString()); return Array.isArray(m) ? m : [m]; };

/** A proxy to the hub at `target` (ws://host:port); connect clients to its `url`. */
export async function recordingProxy(target) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await new Promise((resolve) => wss.once('listening', resolve));
  const fromHub = [];
  const upstreams = new Set();
  wss.on('connection', (down, req) => {
    const headers = req.headers.authorization ? { Authorization: req.headers.authorization } : {};
    const up = new WebSocket(target + req.url, { headers, perMessageDeflate: false });
    upstreams.add(up);
    const early = []; // what the client sent before the hub's side was open
    down.on('message', (data, binary) => {
      if (up.readyState === WebSocket.OPEN) up.send(data, { binary });
      else early.push([data, binary]);
    });
    up.on('open', () => { for (const [data, binary] of early.splice(0)) up.send(data, { binary }); });
    up.on('message', (data, binary) => {
      fromHub.push(...msgs(data));
      down.send(data, { binary });
    });
    up.on('close', () => { upstreams.delete(up); down.close(); });
    down.on('close', () => up.close());
    up.on('error', () => down.terminate());
    down.on('error', () => up.terminate());
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    fromHub,
    close: () => new Promise((r) => {
      for (const up of upstreams) up.terminate();
      for (const c of wss.clients) c.terminate();
      wss.close(r);
    }),
  };
}
