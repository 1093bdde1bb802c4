"""InstanceNormalization and GroupNormalization: normalisation by per-sample statistics.

Unlike inference BatchNorm, the statistics depend on the input, so the gradient is the
full one: with ``x^ = (x - mean) * rstd`` over the normalised axes and ``g = dY * scale``,
``dX = rstd * (g - mean(g) - x^ * mean(g * x^))``.  Means are ``ReduceMean``s, so no axis
needs a static size.  Both torch exporters lower ``nn.GroupNorm`` to
``Reshape -> InstanceNormalization -> Reshape -> Mul -> Add``; GroupNormalization itself
scales per group at opset 18 (the deprecated definition) and per channel from opset 21.
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


def _mean(ctx: RuleContext, value, axes: list[int]):
    if ctx.opset >= 18:
        return ctx.op("ReduceMean", value, ctx.ints(axes), keepdims=1)
    return ctx.op("ReduceMean", value, axes=axes, keepdims=1)


def normalized_backward(ctx: RuleContext, x, g, axes: list[int], eps: float):
    """``dX`` of ``x^ = (x - mean) / sqrt(var + eps)`` over ``axes``, given ``g = dL/dx^``."""
    centered = ctx.op("Sub", x, _mean(ctx, x, axes))
    var = _mean(ctx, ctx.op("Mul", centered, centered), axes)
    rstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar(eps))))
    xhat = ctx.op("Mul", centered, rstd)
    inner = ctx.op("Sub", ctx.op("Sub", g, _mean(ctx, g, axes)), ctx.op("Mul", xhat, _mean(ctx, ctx.op("Mul", g, xhat), axes)))
    return ctx.op("Mul", inner, rstd)


def _per_channel(ctx: RuleContext, value, rank: int):
    """A length-C vector shaped to broadcast over N x C x D1 x ... x Dk."""
    return ctx.op("Reshape", value, ctx.ints([-1] + [1] * (rank - 2)))


@register("InstanceNormalization")
def instance_normalization(ctx: RuleContext):
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.unsupported("gradient with respect to InstanceNormalization parameters")
    rank = len(ctx.shape(ctx.x))
    if rank < 3:
        raise ctx.unsupported(f"InstanceNormalization of a rank-{rank} tensor")
    g = ctx.op("Mul", ctx.dy[0], _per_channel(ctx, ctx.node.inputs[1], rank))
    dx = normalized_backward(ctx, ctx.x, g, list(range(2, rank)), ctx.attr("epsilon", 1e-5))
    return [dx, None, None]


@register("GroupNormalization")
def group_normalization(ctx: RuleContext):
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.unsupported("gradient with respect to GroupNormalization parameters")
    x, scale = ctx.x, ctx.node.inputs[1]
    rank = len(ctx.shape(x))
    if rank < 3:
        raise ctx.unsupported(f"GroupNormalization of a rank-{rank} tensor")
    groups = ctx.attr("num_groups")
    grouped = ctx.ints([0, groups, -1])  # N x G x (C/G * D1 * ... * Dk), N kept dynamic
    if ctx.opset >= 21:  # one scale per channel
        g = ctx.op("Reshape", ctx.op("Mul", ctx.dy[0], _per_channel(ctx, scale, rank)), grouped)
    else:  # opset 18-20: one scale per group
        g = ctx.op("Mul", ctx.op("Reshape", ctx.dy[0], grouped), ctx.op("Reshape", scale, ctx.ints([-1, 1])))
    dx = normalized_backward(ctx, ctx.op("Reshape", x, grouped), g, [2], ctx.attr("epsilon", 1e-5))
    return [ctx.op("Reshape", dx, ctx.shape_of(x)), None, None]
