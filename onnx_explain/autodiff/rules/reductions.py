"""Reductions: the gradient is broadcast back over the reduced axes (divided for means)."""

from __future__ import annotations

import numpy as np

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


def _reduce_axes(ctx: RuleContext) -> list[int]:
    rank = len(ctx.shape(ctx.x))
    axes = ctx.attr("axes")
    if axes is None and ctx.input(1) is not None:
        axes = [int(a) for a in ctx.require_constant(ctx.input(1), "reduction axes")]
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _spread(ctx: RuleContext, dy, axes: list[int], keepdims: bool, scale: float | None):
    if not keepdims and axes:
        dy = ctx.op("Unsqueeze", dy, ctx.ints(axes))
    if scale is not None:
        dy = ctx.op("Mul", dy, ctx.scalar(scale, dy))
    return ctx.op("Expand", dy, ctx.shape_of(ctx.x))


def _count(ctx: RuleContext, axes: list[int]) -> int:
    dims = ctx.shape(ctx.x)
    sizes = [dims[a] for a in axes]
    if any(s is None for s in sizes):
        raise ctx.unsupported("mean over a dynamic axis")
    return int(np.prod(sizes)) if sizes else 1


@register("ReduceSum")
def reduce_sum(ctx: RuleContext):
    axes = _reduce_axes(ctx)
    dx = _spread(ctx, ctx.dy[0], axes, bool(ctx.attr("keepdims", 1)), None)
    return [dx] + [None] * (len(ctx.node.inputs) - 1)


@register("ReduceMean")
def reduce_mean(ctx: RuleContext):
    axes = _reduce_axes(ctx)
    dx = _spread(ctx, ctx.dy[0], axes, bool(ctx.attr("keepdims", 1)), 1.0 / _count(ctx, axes))
    return [dx] + [None] * (len(ctx.node.inputs) - 1)


@register("GlobalAveragePool")
def global_average_pool(ctx: RuleContext):
    axes = list(range(2, len(ctx.shape(ctx.x))))
    return [_spread(ctx, ctx.dy[0], axes, True, 1.0 / _count(ctx, axes))]
