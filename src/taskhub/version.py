"""The package's version, in a module of its own so the client's hello and the hub's OpenAPI
document can read it without importing the package's ``__init__`` (and through it the hub)."""

__version__ = "0.1.0"
