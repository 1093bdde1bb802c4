"""Running the app under uvicorn, with a graceful stop.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, lets the requests in flight
finish, then runs the app's shutdown (the batcher drains its queue); the process then
exits 0.  uvicorn re-raises the signal once it is done, so that a default handler would
kill the process; the handler installed here turns that into a plain, successful exit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from onnx_explain.serve.config import ServeConfig

log = logging.getLogger("onnx_explain.serve")


def _log_stream():
    """The server's standard error, through a descriptor of its own: the image loader
    points descriptor 2 at the null device while a decoder runs (libjpeg and libpng write
    warnings there), and with requests decoded in threads that would swallow log lines
    written meanwhile."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    except (OSError, ValueError, AttributeError):  # no real descriptor (captured output)
        return sys.stderr


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(_log_stream())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name, lvl in (("onnx_explain.serve", level), ("onnx_explain.serve.access", level),
                      ("uvicorn.error", logging.WARNING), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(lvl)
        logger.propagate = False


def make_server(config: ServeConfig, *, log_level: str = "warning", own_logging: bool = False):
    """A ``uvicorn.Server`` for the app (not started)."""
    import uvicorn

    from onnx_explain.serve.app import create_app

    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        log_config=None if own_logging else uvicorn.config.LOGGING_CONFIG,
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


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


#: glibc's malloc settings for the server process (read by glibc when a process starts).
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def malloc_env_missing() -> dict[str, str]:
    """The :data:`MALLOC_ENV` settings this process started without (glibc Linux only).

    Why: each request allocates and frees image-sized buffers (the upload, the decoded
    photo, the heatmap at its size) from several threads.  glibc gives each thread an
    arena of its own and, once a large block has been freed, raises its mmap threshold,
    so that later large blocks come from those arenas, where they fragment and are seldom
    given back.  Measured with ``benchmarks/bench_serve.py`` (EfficientNet-Lite0, 16
    clients, RSS after a warm-up and then every 250 requests up to 1,500): 505 -> 637 MB
    with glibc's defaults, 363 -> 387 MB with these settings (flat after 500 requests);
    set with ``mallopt`` once Python is running they did not help as much (357 -> 426 MB),
    so ``onnx-explain serve`` restarts itself with them in its environment (same process,
    ``exec``).  A variable the user set is left alone.
    """
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return {}
    return {k: v for k, v in MALLOC_ENV.items() if k not in os.environ}


def reexec_with_malloc_env() -> None:
    """``exec`` this command again with :data:`MALLOC_ENV` (no return) when it is missing."""
    missing = malloc_env_missing()
    argv = getattr(sys, "orig_argv", None)
    if not missing or not argv or os.environ.get("ONNX_EXPLAIN_SERVE_EXECED"):
        return
    env = {**os.environ, **missing, "ONNX_EXPLAIN_SERVE_EXECED": "1"}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # cannot exec: serve with glibc's defaults
        return


def run(config: ServeConfig) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit status (0 after a graceful stop)."""
    reexec_with_malloc_env()
    configure_logging()
    server = make_server(config, own_logging=True)
    stopping: list[int] = []

    def _after_shutdown(signum, frame) -> None:  # uvicorn re-raises the signal after its shutdown
        stopping.append(signum)

    previous = {sig: signal.signal(sig, _after_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sock = bind(config.host, config.port)
        host, port = sock.getsockname()[:2]
        log.info("serving %s on http://%s:%d (docs at /docs)%s", config.model, host, port,
                 "; bearer token required" if config.token else "")
        if not config.token and not _is_loopback(host):
            log.warning("listening on %s without a token: anyone who reaches this address can use the model "
                        "(--token or ONNX_EXPLAIN_TOKEN)", host)
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
