"""Exponential and smooth activations: Softplus, Mish, Elu, Selu, Celu, ThresholdedRelu, Softsign.

Each rule multiplies the output gradient by the local derivative.  Piecewise rules select
their branch with a 0/1 mask cast to the float type (``Cast`` + ``Mul``), which ONNX
Runtime's CPU runs faster than a ``Where`` with a scalar branch.  At the kink the branch
taken is the one torch takes (``x <= 0`` uses the exponential branch, ``x > alpha`` passes).
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register

SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


def _mask(ctx: RuleContext, condition):
    return ctx.op("Cast", condition, to=ctx.x.dtype or ctx.em.float_dtype)


def _non_positive(ctx: RuleContext):
    return _mask(ctx, ctx.op("LessOrEqual", ctx.x, ctx.scalar(0.0)))


def _times_local(ctx: RuleContext, local):
    return [ctx.op("Mul", ctx.dy[0], local)]


@register("Softplus")
def softplus(ctx: RuleContext):
    return _times_local(ctx, ctx.op("Sigmoid", ctx.x))


@register("Mish")
def mish(ctx: RuleContext):
    # y = x tanh(softplus(x)); y' = t + x sigmoid(x) (1 - t^2) with t = tanh(softplus(x))
    x = ctx.x
    t = ctx.op("Tanh", ctx.op("Softplus", x))
    sech2 = ctx.op("Sub", ctx.scalar(1.0), ctx.op("Mul", t, t))
    return _times_local(ctx, ctx.op("Add", t, ctx.op("Mul", ctx.op("Mul", x, ctx.op("Sigmoid", x)), sech2)))


@register("Elu")
def elu(ctx: RuleContext):
    # below zero y = alpha (e^x - 1), so y' = y + alpha; above, 1
    alpha = ctx.attr("alpha", 1.0)
    below = ctx.op("Mul", _non_positive(ctx), ctx.op("Add", ctx.y, ctx.scalar(alpha - 1.0)))
    return _times_local(ctx, ctx.op("Add", below, ctx.scalar(1.0)))


@register("Selu")
def selu(ctx: RuleContext):
    # below zero y = gamma alpha (e^x - 1), so y' = y + gamma alpha; above, gamma
    alpha, gamma = ctx.attr("alpha", SELU_ALPHA), ctx.attr("gamma", SELU_GAMMA)
    below = ctx.op("Mul", _non_positive(ctx), ctx.op("Add", ctx.y, ctx.scalar(gamma * alpha - gamma)))
    return _times_local(ctx, ctx.op("Add", below, ctx.scalar(gamma)))


@register("Celu")
def celu(ctx: RuleContext):
    # below zero y = alpha (e^(x/alpha) - 1), so y' = y / alpha + 1; above, 1
    alpha = ctx.attr("alpha", 1.0)
    below = ctx.op("Mul", _non_positive(ctx), ctx.op("Mul", ctx.y, ctx.scalar(1.0 / alpha)))
    return _times_local(ctx, ctx.op("Add", below, ctx.scalar(1.0)))


@register("ThresholdedRelu")
def thresholded_relu(ctx: RuleContext):
    # Read from the input: with alpha < 0 the output 0 lies above the threshold.
    alpha = ctx.attr("alpha", 1.0)
    return _times_local(ctx, _mask(ctx, ctx.op("Greater", ctx.x, ctx.scalar(alpha))))


@register("Softsign")
def softsign(ctx: RuleContext):
    # y' = 1 / (1 + |x|)^2, from the input: 1 - |y| loses precision for large |x|
    inv = ctx.op("Reciprocal", ctx.op("Add", ctx.op("Abs", ctx.x), ctx.scalar(1.0)))
    return _times_local(ctx, ctx.op("Mul", inv, inv))
