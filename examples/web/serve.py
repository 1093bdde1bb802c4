"""Serve the page on http://127.0.0.1:PORT/ (this machine only), with the MIME types that
ES modules and WebAssembly need.

    python examples/web/serve.py                      # the page, model/explain.onnx
    python examples/web/serve.py --model x.onnx       # serve x.onnx as model/explain.onnx
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
         ".css": "text/css", ".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}
MODEL_PATH = "/model/explain.onnx"


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}
    model: str | None = None

    def translate_path(self, path: str) -> str:
        if self.model and path.split("?", 1)[0] == MODEL_PATH:
            return self.model
        return super().translate_path(path)

    def log_message(self, format: str, *args) -> None:  # quiet unless asked
        if os.environ.get("SERVE_LOG"):
            super().log_message(format, *args)


def make_server(port: int = 0, model: str | os.PathLike | None = None, root: Path = ROOT) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0: any free port; ``server.server_address[1]`` tells)."""
    handler = type("PageHandler", (Handler,), {"model": None if model is None else os.fspath(Path(model).resolve())})
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(root)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", help="explain model to serve as model/explain.onnx")
    args = parser.parse_args()
    server = make_server(args.port, args.model)
    print(f"http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
