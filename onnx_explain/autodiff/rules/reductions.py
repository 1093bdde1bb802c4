"""Reductions: the gradient is broadcast back over the reduced axes (divided for means,
times the local derivative for L1, L2, sum of squares, log-sum-exp and product).

ReduceMax and ReduceMin route the gradient to an arg-max instead: see ``extremes``.
"""

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


# -- reductions whose gradient depends on the input: dX = spread(dY) * local(X, spread(Y)) --


def _kept(ctx: RuleContext, value, axes: list[int]):
    """``value`` with the reduced axes present (size 1), so that it broadcasts against X."""
    if not ctx.attr("keepdims", 1) and axes:
        return ctx.op("Unsqueeze", value, ctx.ints(axes))
    return value


def _reduce(ctx: RuleContext, op_type: str, value, axes: list[int]):
    """``op_type`` over ``axes`` with kept dims; axes as an input where the opset has it."""
    if op_type == "ReduceSum" or ctx.opset >= 18:
        return ctx.op(op_type, value, ctx.ints(axes), keepdims=1)
    return ctx.op(op_type, value, axes=axes, keepdims=1)


def _times_local(ctx: RuleContext, local_of):
    """``local_of(y, axes)``: the local derivative; ``y()`` gives Y with its dims kept (only
    emitted when asked for: ONNX Runtime runs unused nodes too)."""
    axes = _reduce_axes(ctx)
    dy = _kept(ctx, ctx.dy[0], axes)
    return [ctx.op("Mul", dy, local_of(lambda: _kept(ctx, ctx.y, axes), axes))] + [None] * (len(ctx.node.inputs) - 1)


@register("ReduceSumSquare")
def reduce_sum_square(ctx: RuleContext):
    return _times_local(ctx, lambda y, axes: ctx.op("Mul", ctx.x, ctx.scalar(2.0)))


@register("ReduceL1")
def reduce_l1(ctx: RuleContext):
    return _times_local(ctx, lambda y, axes: ctx.op("Sign", ctx.x))


@register("ReduceL2")
def reduce_l2(ctx: RuleContext):
    # x / ||x||; an all-zero slice gets 0 (as torch's norm), not 0/0
    def local(y, axes):
        norm = y()
        safe = ctx.op("Add", norm, ctx.op("Cast", ctx.op("Equal", norm, ctx.scalar(0.0)), to=ctx.x.dtype or ctx.em.float_dtype))
        return ctx.op("Div", ctx.x, safe)

    return _times_local(ctx, local)


@register("ReduceLogSumExp")
def reduce_log_sum_exp(ctx: RuleContext):
    return _times_local(ctx, lambda y, axes: ctx.op("Exp", ctx.op("Sub", ctx.x, y())))


@register("ReduceProd")
def reduce_prod(ctx: RuleContext):
    # The product of the other elements, without dividing by zero: with no zero in the
    # slice it is y / x; with one zero, the product of the non-zeros at the zero, 0 elsewhere;
    # with two or more zeros, 0.
    def local(y, axes):
        if not axes:  # noop_with_empty_axes: y = x
            return ctx.scalar(1.0)
        dtype = ctx.x.dtype or ctx.em.float_dtype
        zero = ctx.op("Cast", ctx.op("Equal", ctx.x, ctx.scalar(0.0)), to=dtype)
        nonzero = ctx.op("Add", ctx.x, zero)  # zeros replaced by ones
        prod = _reduce(ctx, "ReduceProd", nonzero, axes)
        zeros = _reduce(ctx, "ReduceSum", zero, axes)
        none = ctx.op("Cast", ctx.op("Equal", zeros, ctx.scalar(0.0)), to=dtype)
        one = ctx.op("Cast", ctx.op("Equal", zeros, ctx.scalar(1.0)), to=dtype)
        others = ctx.op("Add", ctx.op("Div", none, nonzero), ctx.op("Mul", one, zero))
        return ctx.op("Mul", prod, others)

    return _times_local(ctx, local)
