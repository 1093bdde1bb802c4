"""Undoing numpy-style broadcasting on the way back: sum over the broadcast axes."""

from __future__ import annotations

import onnx_ir as ir

from onnx_explain.autodiff.context import RuleContext


def unbroadcast(ctx: RuleContext, grad: ir.Value, x: ir.Value, y: ir.Value) -> ir.Value:
    """Reduce ``grad`` (shaped like ``y``) to the shape of ``x`` that was broadcast into ``y``."""
    xs, ys = ctx.shape(x), ctx.shape(y)
    lead = len(ys) - len(xs)
    axes = list(range(lead))
    for i, d in enumerate(xs):
        if d == 1 and ys[i + lead] != 1:
            axes.append(i + lead)
    if not axes:
        return grad
    summed = ctx.op("ReduceSum", grad, ctx.ints(axes), keepdims=1)
    return ctx.op("Reshape", summed, ctx.shape_of(x))
