"""Running the app under uvicorn, with a graceful stop.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, lets the requests in flight
finish, then runs the app's shutdown (the batcher drains its queue); the process then
exits 0.  uvicorn re-raises the signal once it is done, so that a default handler would
kill the process; the handler installed here turns that into a plain, successful exit.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

from onnx_explain.serve.config import ServeConfig

log = logging.getLogger("onnx_explain.serve")


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("onnx_explain.serve", "onnx_explain.serve.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def make_server(config: ServeConfig, *, log_level: str = "warning"):
    """A ``uvicorn.Server`` for the app (not started)."""
    import uvicorn

    from onnx_explain.serve.app import create_app

    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=False,  # ours writes one line per request
        lifespan="on",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=max(5, int(config.timeout_s) + 5),
        server_header=False,
        date_header=True,
    )
    return uvicorn.Server(uv_config)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def run(config: ServeConfig) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit status (0 after a graceful stop)."""
    configure_logging()
    server = make_server(config)
    stopping: list[int] = []

    def _after_shutdown(signum, frame) -> None:  # uvicorn re-raises the signal after its shutdown
        stopping.append(signum)

    previous = {sig: signal.signal(sig, _after_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sock = bind(config.host, config.port)
        host, port = sock.getsockname()[:2]
        log.info("serving %s on http://%s:%d (docs at /docs)%s", config.model, host, port,
                 "; bearer token required" if config.token else "")
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
