"""Run an emulator with uvicorn on loopback, in a thread, from sync or async code."""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType
from typing import Any

import anyio.to_thread

__all__ = ["RunningServer"]


class _HideDroppedConnections(logging.Filter):
    """uvicorn logs every exception of the app; a simulated dropped connection is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ._emulator import DroppedConnection

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


_FILTER = _HideDroppedConnections()


class RunningServer:
    """An emulator served by uvicorn on ``host:port`` until :meth:`stop`.

    The socket is bound before this returns, so ``url`` is usable at once
    (early connections wait in the listen backlog while uvicorn starts).
    ``with server as url`` and ``async with server as url`` stop it on exit.

    .. versionadded:: 0.1.0
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            import uvicorn
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError(
                "Emulator.serve() needs uvicorn: pip install 'apientreprise_async[cli]'"
            ) from None
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this. asyncio sets it itself only on sockets made
        # with proto=IPPROTO_TCP; without it, Nagle's algorithm holds the body of
        # every keep-alive answer until the client's delayed ACK, about 40 ms.
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        bound_host, bound_port = self._socket.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        logging.getLogger("uvicorn.error").addFilter(_FILTER)
        config = uvicorn.Config(
            app,
            interface="asgi3",  # a bound method defeats uvicorn's detection
            proxy_headers=False,  # the client address is the socket's peer, as in production
            log_config=None,  # leave the user's logging configuration alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            # The emulator dates its answers on its own (possibly offset) clock.
            date_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"api-entreprise-emulator-{bound_port}",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        state = "running" if self._thread.is_alive() else "stopped"
        return f"<RunningServer {self.url} {state}>"

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread (a few tenths of a second)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> str:
        return self.url

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> str:
        return self.url

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Joining the thread blocks; keep the event loop free meanwhile.
        await anyio.to_thread.run_sync(self.stop)
