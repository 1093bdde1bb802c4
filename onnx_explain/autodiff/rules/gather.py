"""Gather: the gradient is scattered back to the gathered positions, adding duplicates."""

from __future__ import annotations

import numpy as np

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


@register("Gather")
def gather(ctx: RuleContext):
    if ctx.needs(1):
        raise ctx.unsupported("gradient with respect to Gather indices")
    x, indices = ctx.node.inputs
    r = len(ctx.shape(x))
    q = len(ctx.shape(indices))
    a = ctx.attr("axis", 0) % r
    const = ctx.constant(indices)
    if ctx.opset < 16:  # ScatterND has no "add" reduction before opset 16
        dims = ctx.shape(x)
        if const is None or dims[a] is None:
            raise ctx.unsupported("Gather with run-time indices needs opset >= 16")
        flat = np.where(const < 0, const + dims[a], const).reshape(-1)
        if len(set(flat.tolist())) != flat.size:
            raise ctx.unsupported("Gather with repeated indices needs opset >= 16")
    dy = ctx.dy[0]
    # Bring the gathered axis to the front: dX' (x[a], x[:a], x[a+1:]) and
    # dY' (indices..., x[:a], x[a+1:]) flattened to (M, x[:a], x[a+1:]).
    if a > 0:
        dy = ctx.op("Transpose", dy, perm=list(range(a, a + q)) + list(range(a)) + list(range(a + q, r - 1 + q)))
    x_perm = [a] + list(range(a)) + list(range(a + 1, r))
    x_shape = ctx.shape_of(x)
    front_shape = ctx.op("Gather", x_shape, ctx.ints(x_perm), axis=0)
    rest = ctx.op("Slice", front_shape, ctx.ints([1]), ctx.ints([r]))
    dy = ctx.op("Reshape", dy, ctx.op("Concat", ctx.ints([-1]), rest, axis=0))
    size = ctx.op("Gather", x_shape, ctx.ints([a]), axis=0)
    idx = ctx.op("Reshape", indices, ctx.ints([-1, 1]))
    idx = ctx.op("Where", ctx.op("Less", idx, ctx.em.const(np.zeros((), dtype=np.int64))), ctx.op("Add", idx, size), idx)
    zero = ctx.op("ConstantOfShape", front_shape, value=_zero(ctx))
    reduction = {"reduction": "add"} if ctx.opset >= 16 else {}
    dx = ctx.op("ScatterND", zero, idx, dy, **reduction)
    if a > 0:
        dx = ctx.op("Transpose", dx, perm=list(range(1, a + 1)) + [0] + list(range(a + 1, r)))
    return [dx, None]


def _zero(ctx: RuleContext):
    import onnx_ir as ir

    return ir.tensor(np.zeros((1,), dtype=ctx.numpy_dtype()))
