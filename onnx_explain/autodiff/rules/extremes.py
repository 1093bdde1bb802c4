"""ReduceMax, ReduceMin, GlobalMaxPool: the gradient goes to one arg-max per reduced slice.

As MaxPool's rule (and torch's ``max(dim)`` / adaptive max pooling): where several elements
tie, the first in row-major order of the reduced axes takes the whole gradient, so the
gradient's total is conserved.  The reduced axes are moved last and flattened, ``ArgMax``
finds the position, and ``ScatterElements`` puts the gradient there; kept axes (the batch)
stay dynamic.
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register
from onnx_explain.autodiff.rules.reductions import _reduce_axes


def route_to_extreme(ctx: RuleContext, dy, axes: list[int], arg_op: str):
    """``dy`` (the reduction's output gradient, dims kept or not) scattered to the first
    ``arg_op`` position of each slice of ``ctx.x`` over ``axes``."""
    x = ctx.x
    if not axes:  # noop_with_empty_axes: the identity
        return dy
    rank = len(ctx.shape(x))
    kept = [a for a in range(rank) if a not in axes]
    perm = kept + axes
    moved = x if perm == list(range(rank)) else ctx.op("Transpose", x, perm=perm)
    flat = ctx.op("Reshape", moved, ctx.ints([0] * len(kept) + [-1]))
    where = ctx.op(arg_op, flat, axis=len(kept), keepdims=1)
    g = ctx.op("Reshape", dy, ctx.shape_of(where))
    scattered = ctx.op("ScatterElements", ctx.zeros_like(flat), where, g, axis=len(kept))
    g = ctx.op("Reshape", scattered, ctx.shape_of(moved))
    if moved is x:
        return g
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return ctx.op("Transpose", g, perm=inverse)


@register("ReduceMax", "ReduceMin")
def reduce_extreme(ctx: RuleContext):
    arg_op = "ArgMax" if ctx.node.op_type == "ReduceMax" else "ArgMin"
    dx = route_to_extreme(ctx, ctx.dy[0], _reduce_axes(ctx), arg_op)
    return [dx] + [None] * (len(ctx.node.inputs) - 1)


@register("GlobalMaxPool")
def global_max_pool(ctx: RuleContext):
    rank = len(ctx.shape(ctx.x))
    return [route_to_extreme(ctx, ctx.dy[0], list(range(2, rank)), "ArgMax")]
