"""BatchNormalization (inference) and LayerNormalization."""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


@register("BatchNormalization")
def batch_normalization(ctx: RuleContext):
    # Inference mode: an affine map per channel, y = x * scale / sqrt(var + eps) + const.
    if ctx.attr("training_mode", 0):
        raise ctx.unsupported("BatchNormalization in training mode")
    if any(ctx.needs(i) for i in range(1, 5)):
        raise ctx.unsupported("gradient with respect to BatchNormalization parameters")
    _, scale, _, _, var = ctx.node.inputs[:5]
    eps = ctx.attr("epsilon", 1e-5)
    factor = ctx.op("Div", scale, ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar(eps, var))))
    rank = len(ctx.shape(ctx.x))
    factor = ctx.op("Reshape", factor, ctx.ints([-1] + [1] * (rank - 2)))
    return [ctx.op("Mul", ctx.dy[0], factor)] + [None] * (len(ctx.node.inputs) - 1)


@register("LayerNormalization")
def layer_normalization(ctx: RuleContext):
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.unsupported("gradient with respect to LayerNormalization parameters")
    x, scale = ctx.x, ctx.node.inputs[1]
    dims = ctx.shape(x)
    rank = len(dims)
    axis = ctx.attr("axis", -1) % rank
    eps = ctx.attr("epsilon", 1e-5)
    axes = list(range(axis, rank))
    n = 1
    for a in axes:
        if dims[a] is None:
            raise ctx.unsupported("normalising over a dynamic axis")
        n *= dims[a]
    axes_v = ctx.ints(axes)
    inv_n = ctx.scalar(1.0 / n)

    def mean(v):
        return ctx.op("Mul", ctx.op("ReduceSum", v, axes_v, keepdims=1), inv_n)

    centered = ctx.op("Sub", x, mean(x))
    var = mean(ctx.op("Mul", centered, centered))
    rstd = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.scalar(eps))))
    xhat = ctx.op("Mul", centered, rstd)
    g = ctx.op("Mul", ctx.dy[0], scale)
    inner = ctx.op("Sub", ctx.op("Sub", g, mean(g)), ctx.op("Mul", xhat, mean(ctx.op("Mul", g, xhat))))
    return [ctx.op("Mul", inner, rstd), None, None]
