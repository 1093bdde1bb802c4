"""Starting ``onnx-explain serve`` for the tests: on 127.0.0.1, on a free port, always stopped.

``running(config)`` runs uvicorn in a thread of the test process (fast: the model and
onnxruntime are imported once); ``spawned(args)`` runs the real command in a child process
(for signals).  Both wait until ``/v2/health/ready`` says so, or fail the test.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx

from onnx_explain.serve.config import ServeConfig

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass
class Running:
    url: str
    port: int
    state: object  # ServerState
    server: object  # uvicorn.Server

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30.0), **kwargs)


def wait_ready(url: str, timeout: float = 60.0, headers: dict | None = None, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2.0, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server at {url} not ready within {timeout} s")


@contextlib.contextmanager
def running(config: ServeConfig, ready: bool = True) -> Iterator[Running]:
    from onnx_explain.serve.server import bind, make_server

    assert config.host == LOOPBACK
    server = make_server(config)
    sock = bind(LOOPBACK, 0)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        if ready:
            wait_ready(url)
        state = server.config.app.state.server
        yield Running(url, port, state, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "server thread did not stop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def spawned(model: Path, *args: str, env: dict | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """``onnx-explain serve MODEL --port P ARGS`` in a child process (stdout+stderr piped)."""
    port = free_port()
    cmd = [sys.executable, "-m", "onnx_explain.command.cli", "serve", str(model), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    url = f"http://{LOOPBACK}:{port}"
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()


def b64(path: Path | bytes) -> str:
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return base64.b64encode(data).decode("ascii")


def config(model: Path, **kwargs) -> ServeConfig:
    kwargs.setdefault("access_log", False)
    kwargs.setdefault("name", "tiny")
    kwargs.setdefault("threads", 1)
    return ServeConfig(model=model, host=LOOPBACK, port=0, device="cpu", **kwargs)
