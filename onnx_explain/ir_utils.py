"""Loading ONNX models into onnx-ir in the form the rewriting passes expect."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from onnx_explain.errors import ModelError

MIN_OPSET = 13
MAX_OPSET = 23


def load_for_rewriting(model: onnx.ModelProto) -> ir.Model:
    """Shape-infer, convert to onnx-ir and sort; refuse opsets we do not handle."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(
            f"opset {opset} is older than {MIN_OPSET}; convert it first "
            f"(onnx.version_converter.convert_version(model, {MIN_OPSET}))"
        )
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # shape inference is best effort; rules report what they lack
        raise ModelError(f"ONNX shape inference failed: {exc}") from exc
    irm = ir.from_proto(model)
    irm.graph.sort()
    return irm
