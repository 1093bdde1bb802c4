"""onnx-explain: Grad-CAM, CAM, saliency and relatives from one ONNX model, without torch.

``Explainer`` (images in, explanations out) and ``augment_model`` (any ONNX classifier
in, explain model out) are imported on first use, so ``import onnx_explain`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# From a source checkout, onnx_explain.export / .models / .command.cli are the
# repository-top export/, models/ and cli.py (installed, they are inside the package).
from onnx_explain import _checkout

_checkout.install(__path__[0])
del _checkout

_LAZY = {
    "Explainer": "onnx_explain.explainer",
    "Explanation": "onnx_explain.explainer",
    "Prediction": "onnx_explain.explainer",
    "ItemError": "onnx_explain.explainer",
    "augment_model": "onnx_explain.augment",
    "ExplainError": "onnx_explain.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnx_explain' has no attribute {name!r}")
