"""Resize: exact adjoint of a separable resize, as two small matrix products.

A resize of the last two axes is ``Y = R_h X R_w^T`` for interpolation matrices that depend
only on the sizes and the attributes.  We compute them once, at rewrite time, by running
the same Resize node on identity matrices with ONNX's reference evaluator, so every mode
(nearest, linear, cubic) and coordinate convention is reproduced exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register

_COPIED = ("mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
           "extrapolation_value", "nearest_mode", "antialias")


def _matrix(ctx: RuleContext, n_in: int, n_out: int, scale: float | None) -> np.ndarray:
    """(n_out x n_in) interpolation matrix along one axis."""
    attrs = {}
    for k in _COPIED:
        v = ctx.attr(k)
        if v is not None:
            attrs[k] = v.decode() if isinstance(v, bytes) else v
    inputs = ["x", "", "scales"] if scale is not None else ["x", "", "", "sizes"]
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    inits = []
    if scale is not None:
        inits.append(helper.make_tensor("scales", onnx.TensorProto.FLOAT, [4], [1.0, 1.0, scale, 1.0]))
    else:
        inits.append(helper.make_tensor("sizes", onnx.TensorProto.INT64, [4], [n_in, 1, n_out, 1]))
    graph = helper.make_graph(
        [node], "axis", [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [n_in, 1, n_in, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(ctx.opset, 13))])
    eye = np.eye(n_in, dtype=np.float64).reshape(n_in, 1, n_in, 1)
    (out,) = ReferenceEvaluator(model).run(None, {"x": eye})
    if out.shape[2] != n_out:
        raise ctx.unsupported(f"could not reproduce the resize ({n_in} -> {out.shape[2]}, expected {n_out})")
    return out[:, 0, :, 0].T


@register("Resize", "Upsample")
def resize(ctx: RuleContext):
    x_dims, y_dims = ctx.shape(ctx.x), ctx.shape(ctx.y)
    if len(x_dims) != 4:
        raise ctx.unsupported("Resize of a tensor that is not 4-D")
    if x_dims[:2] != y_dims[:2] and not (x_dims[0] is None and y_dims[0] is None and x_dims[1] == y_dims[1]):
        raise ctx.unsupported("Resize that changes batch or channel axes")
    if any(d is None for d in x_dims[2:] + y_dims[2:]):
        raise ctx.unsupported("Resize needs static spatial sizes")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
        raise ctx.unsupported(f"keep_aspect_ratio_policy {policy!r}")
    scales = None
    scales_input = 2 if ctx.node.op_type == "Resize" else 1
    if ctx.input(scales_input) is not None:
        arr = ctx.constant(ctx.input(scales_input))
        if arr is not None and arr.size:
            scales = [float(s) for s in arr]
    rh = _matrix(ctx, x_dims[2], y_dims[2], scales[2] if scales else None)
    rw = _matrix(ctx, x_dims[3], y_dims[3], scales[3] if scales else None)
    dtype = np.float32 if ctx.x.dtype is None or ctx.x.dtype.name == "FLOAT" else np.float64
    g = ctx.op("MatMul", ctx.em.const(rh.T.astype(dtype)), ctx.dy[0])  # (H_in x H_out) @ dY
    g = ctx.op("MatMul", g, ctx.em.const(rw.astype(dtype)))  # @ (W_out x W_in)
    return [g] + [None] * (len(ctx.node.inputs) - 1)
