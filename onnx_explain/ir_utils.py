"""Loading ONNX models into onnx-ir in the form the rewriting passes expect."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from onnx_explain.normalize import MAX_OPSET, MIN_OPSET, normalize_model

__all__ = ["load_for_rewriting", "MIN_OPSET", "MAX_OPSET"]


def load_for_rewriting(model: onnx.ModelProto, size: tuple[int, int] | None = None, *,
                       image: bool = True) -> ir.Model:
    """Normalise (see :mod:`onnx_explain.normalize`) and convert to onnx-ir, nodes sorted.

    ``size`` (height, width) fixes a dynamic image height/width; ``image=False`` for graphs
    that are not image classifiers.
    """
    return normalize_model(model, size, image=image)
