"""``onnx-explain serve``: an explain model behind HTTP (Open Inference Protocol v2, KServe v1).

Needs the ``[serve]`` extra (FastAPI, uvicorn, prometheus-client, python-multipart); the
base runtime does not import anything from here.
"""

from __future__ import annotations

from typing import Any

from onnx_explain.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from onnx_explain.serve.app import create_app

        return create_app
    if name == "run":
        from onnx_explain.serve.server import run

        return run
    raise AttributeError(f"module 'onnx_explain.serve' has no attribute {name!r}")
