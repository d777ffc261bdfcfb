"""Running the app under uvicorn: bind first (a busy port is a clear error), say "ready" once accepting."""

from __future__ import annotations

import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moe_experts.serve.engine import Engine

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host``:``port`` (0 picks a free port), or a ConfigError naming the fix."""
    from moe_experts.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"`host` {host!r} is not an address this machine can listen on: {exc.strerror}",
                          hint="use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          hint="choose another `port` (0 picks a free one), or stop the program using it") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(engine: Engine, sock: socket.socket, *, access_log: bool = True) -> None:
    """Serve until SIGINT or SIGTERM: stop accepting, let requests in flight finish (30 s at most), return.

    After SIGTERM this returns normally, so the process exits 0 (uvicorn would re-raise the signal, and
    process managers would read a drained stop as a crash); SIGINT keeps uvicorn's behaviour. SIGHUP
    reloads the router (``Engine.reload_router``) in a thread; requests go on meanwhile.
    """
    import asyncio

    import uvicorn

    from moe_experts.serve.app import create_app

    url = url_of(sock)

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                if hasattr(signal, "SIGHUP"):
                    loop = asyncio.get_running_loop()
                    loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload, engine))
                logger.info("ready: %s/v1 (models: %s; loaded in %.1f s)", url, ", ".join(engine.models),
                            engine.load_seconds)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                logger.info("SIGTERM: no new connections; finishing the requests in flight, then exiting 0")
                captured = getattr(self, "_captured_signals", None)  # what uvicorn re-raises after shutdown
                if isinstance(captured, list) and sig in captured:
                    captured.remove(sig)

    config = uvicorn.Config(create_app(engine), access_log=access_log, timeout_graceful_shutdown=30)
    Server(config).run(sockets=[sock])


def _reload(engine: Engine) -> None:
    """SIGHUP: reload the router, or say in the log why the current one keeps serving."""
    logger.info("SIGHUP: reloading the router")
    try:
        engine.reload_router()
    except Exception as exc:
        logger.error("SIGHUP: the router was not reloaded; %s keeps serving: %s", engine.router_version,
                     getattr(exc, "message", None) or exc)
