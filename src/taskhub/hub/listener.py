"""uvicorn serving the hub's ASGI app on its port.

Two things differ from ``uvicorn.Server.serve()``: a failed start (a port in use, say), which
uvicorn logs and answers with ``sys.exit``, raises an :class:`OSError` naming the address and
the reason; and SIGTERM/SIGINT can be handed to the caller (the server's graceful stop)
instead of closing every connection at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn


class Listener:
    """One uvicorn server: :meth:`start` until it listens, :meth:`close_sockets` to take no
    more connections, :meth:`stop` to end it (waiting up to its graceful timeout for the
    connections' handlers). ``uvicorn`` is the :class:`uvicorn.Server` itself."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[int], None] | None) -> None:
        self.uvicorn = _Uvicorn(config, on_signal)
        self.where = f"{config.host}:{config.port}"
        self._task: asyncio.Task[None] | None = None

    async def start(self, sockets: list[socket.socket] | None = None) -> list[tuple[str, int]]:
        """Listen (on ``sockets``, bound already, instead of the config's address); returns
        the addresses bound. Raises :class:`OSError` if it cannot."""
        self._task = asyncio.create_task(self._serve(sockets))
        while not self.uvicorn.started:
            if self._task.done():
                failed, self._task = self._task, None
                await failed  # raises why (_serve)
                raise OSError(f"could not listen on {self.where}")
            await asyncio.sleep(0.01)
        return [sock.getsockname()[:2] for s in self.uvicorn.servers for sock in s.sockets]

    def close_sockets(self) -> None:
        """Take no new connections (those open go on)."""
        for server in self.uvicorn.servers:
            server.close()

    async def stop(self) -> None:
        """Stop serving: uvicorn waits (up to its graceful timeout) for the connections'
        handlers to end."""
        if self._task is not None:
            self.uvicorn.should_exit = True
            await self._task
            self._task = None

    async def _serve(self, sockets: list[socket.socket] | None) -> None:
        reason = _StartupError(self.uvicorn)
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addFilter(reason)
        try:
            await self.uvicorn.serve(sockets)
        except SystemExit:
            # A SystemExit would leave the task and stop the event loop itself.
            raise OSError(
                f"could not listen on {self.where}: {reason.message or 'see the log'}"
            ) from None
        finally:
            uvicorn_log.removeFilter(reason)


class _StartupError(logging.Filter):
    """Until uvicorn has started, keeps an error it logs (why it could not start) rather than
    letting it through: the hub raises it in an OSError, which `taskhub serve` prints as its
    one ``error:`` line. Once started, uvicorn's errors are logged as usual."""

    def __init__(self, server: uvicorn.Server) -> None:
        super().__init__()
        self.server = server
        self.message = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.server.started or record.levelno < logging.ERROR:
            return True
        self.message = record.getMessage()
        return False


class _Uvicorn(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT go to ``on_signal`` when it is given.

    uvicorn's own handling would close every connection at once, and after serving it raises
    the signal again so that it ends the process (exit status 143/130). With ``on_signal`` the
    signal is handled, not recorded, so ``taskhub serve`` finishes its shutdown and exits 0.
    """

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[int], None] | None) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.on_signal is None:
            super().handle_exit(sig, frame)
        else:
            self.on_signal(sig)
