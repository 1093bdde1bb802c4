"""Pointwise activations: the gradient is the output gradient times a local derivative."""

from __future__ import annotations

import math

import numpy as np

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


def _masked(ctx: RuleContext, mask, dy):
    """``dy`` where ``mask`` holds, else 0.

    As a product with the mask cast to float: ONNX Runtime's CPU ``Where`` with a scalar
    branch is several times slower than ``Cast`` + ``Mul`` on large activations.
    """
    dtype = ctx.y.dtype or ctx.em.float_dtype
    return ctx.op("Mul", dy, ctx.op("Cast", mask, to=dtype))


@register("Relu")
def relu(ctx: RuleContext):
    dy = ctx.dy[0]
    if ctx.mode == "guided":  # guided backprop: only positive gradients pass back
        dy = ctx.op("Relu", dy)
    # The mask is read from the output (y > 0 exactly where x > 0): the forward keeps its
    # Conv+Relu fusion because the pre-activation is not needed by the backward.
    return [_masked(ctx, ctx.op("Greater", ctx.y, ctx.scalar(0.0)), dy)]


@register("LeakyRelu")
def leaky_relu(ctx: RuleContext):
    alpha = ctx.attr("alpha", 0.01)
    dy = ctx.dy[0]
    return [ctx.op("Where", ctx.op("Greater", ctx.x, ctx.scalar(0.0)), dy, ctx.op("Mul", dy, ctx.scalar(alpha)))]


@register("PRelu")
def prelu(ctx: RuleContext):
    if ctx.needs(1):
        raise ctx.unsupported("gradient with respect to the slope")
    dy = ctx.dy[0]
    slope = ctx.node.inputs[1]
    return [ctx.op("Where", ctx.op("Greater", ctx.x, ctx.scalar(0.0)), dy, ctx.op("Mul", dy, slope)), None]


@register("Clip")
def clip(ctx: RuleContext):
    # Same convention as torch's hardtanh/ReLU6: zero gradient at and beyond the bounds.
    # Tested on the output, which equals the input strictly inside the bounds and a bound
    # outside them, so the forward keeps its Conv+Clip fusion.
    lo, hi = ctx.input(1), ctx.input(2)
    if ctx.needs(1) or ctx.needs(2):
        raise ctx.unsupported("gradient with respect to the clip bounds")
    mask = None
    if lo is not None:
        mask = ctx.op("Greater", ctx.y, lo)
    if hi is not None:
        upper = ctx.op("Less", ctx.y, hi)
        mask = upper if mask is None else ctx.op("And", mask, upper)
    dx = ctx.dy[0] if mask is None else _masked(ctx, mask, ctx.dy[0])
    return [dx] + [None] * (len(ctx.node.inputs) - 1)


@register("Sigmoid")
def sigmoid(ctx: RuleContext):
    y = ctx.y
    return [ctx.op("Mul", ctx.dy[0], ctx.op("Mul", y, ctx.op("Sub", ctx.scalar(1.0), y)))]


# A step as one ``HardSigmoid``: clip(K * (b - v), 0, 1) is exactly 1 where v < b and 0
# where v >= b.  K = 2^60 and b a float32 value: K * b is exact in the float attribute, and
# below the bound K * (b - v) is at least K * (spacing of the floats at b) >= 1, in float32
# and in float64, for b >= 2^-7; a product that overflows to -inf is clipped to 0.  One
# pass writing floats, where a comparison + ``Cast`` is two (the ``Cast`` from bool is the
# slower one) and ``Where`` is 10-20 x slower than either on ONNX Runtime's CPU provider
# (``benchmarks/bench_hard_activations.py``).
_STEP_GAIN = 2.0 ** 60
_STEP_MIN_BOUND = 2.0 ** -7


def _below(ctx: RuleContext, v, bound: float):
    """1.0 where ``v < bound``, else 0.0 (``bound``: a float32 value >= 2^-7)."""
    return ctx.op("HardSigmoid", v, alpha=-_STEP_GAIN, beta=bound * _STEP_GAIN)


@register("HardSigmoid")
def hard_sigmoid(ctx: RuleContext):
    # y = clip(alpha * x + beta, 0, 1).  torch's hardsigmoid backward: 1/6 strictly inside
    # (-3, 3), else 0, decided on the input (the output already rounds to 1 at the float
    # just below 3).  Reading the input costs no Conv+HardSigmoid fusion where it would
    # matter: MobileNetV3's gates are N x C x 1 x 1, and x * HardSigmoid(x) reads x anyway.
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    x, dy = ctx.x, ctx.dy[0]
    if alpha == 0.0:
        return [ctx.op("Mul", dy, ctx.scalar(0.0))]
    half = float(np.float32(0.5 / abs(alpha)))
    if beta == 0.5 and half >= _STEP_MIN_BOUND:  # symmetric about 0: |x| < half, two passes
        inside = _below(ctx, ctx.op("Abs", x), half)
    else:
        lo, hi = sorted(((0.0 - beta) / alpha, (1.0 - beta) / alpha))
        both = ctx.op("And", ctx.op("Greater", x, ctx.scalar(lo)), ctx.op("Less", x, ctx.scalar(hi)))
        inside = ctx.op("Cast", both, to=x.dtype or ctx.em.float_dtype)
    return [ctx.op("Mul", ctx.op("Mul", dy, inside), ctx.scalar(alpha))]


@register("HardSwish")
def hard_swish(ctx: RuleContext):
    # y = x * hardsigmoid(x), hardsigmoid(x) = clip(x/6 + 1/2, 0, 1).  torch's backward: 0 up
    # to -3, x/3 + 1/2 strictly between, 1 from 3 on -- the product rule with the
    # hard-sigmoid's slope 1/6 strictly inside (-3, 3):
    #     dx = dy * (hardsigmoid(x) + x/6 * [|x| < 3]).
    # Six elementwise passes, all of which the CPU runtime keeps in ONNX Runtime's NCHWc
    # layout, besides the hard-sigmoid, which is the one ONNX Runtime computes for the
    # forward HardSwish (the same node: ``nchwc_masks`` merges them).  ``Where`` forms of the
    # same function cost 2-3 x as much (``benchmarks/bench_hard_activations.py``).
    x = ctx.x
    hs = ctx.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5)
    slope = ctx.op("Mul", ctx.op("Mul", x, ctx.scalar(1.0 / 6.0)), _below(ctx, ctx.op("Abs", x), 3.0))
    return [ctx.op("Mul", ctx.dy[0], ctx.op("Add", hs, slope))]


@register("Tanh")
def tanh(ctx: RuleContext):
    y = ctx.y
    return [ctx.op("Mul", ctx.dy[0], ctx.op("Sub", ctx.scalar(1.0), ctx.op("Mul", y, y)))]


@register("Erf")
def erf(ctx: RuleContext):
    x = ctx.x
    local = ctx.op("Mul", ctx.op("Exp", ctx.op("Neg", ctx.op("Mul", x, x))), ctx.scalar(2.0 / math.sqrt(math.pi)))
    return [ctx.op("Mul", ctx.dy[0], local)]


@register("Gelu")
def gelu(ctx: RuleContext):
    x = ctx.x
    if ctx.attr("approximate", "none") == "tanh":
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = ctx.op("Mul", x, x)
        u = ctx.op("Mul", ctx.op("Add", x, ctx.op("Mul", ctx.op("Mul", x2, x), ctx.scalar(k))), ctx.scalar(c))
        t = ctx.op("Tanh", u)
        du = ctx.op("Mul", ctx.op("Add", ctx.scalar(1.0), ctx.op("Mul", x2, ctx.scalar(3 * k))), ctx.scalar(c))
        sech2 = ctx.op("Sub", ctx.scalar(1.0), ctx.op("Mul", t, t))
        local = ctx.op(
            "Add",
            ctx.op("Mul", ctx.op("Add", ctx.scalar(1.0), t), ctx.scalar(0.5)),
            ctx.op("Mul", ctx.op("Mul", ctx.op("Mul", x, sech2), du), ctx.scalar(0.5)),
        )
    else:
        cdf = ctx.op("Mul", ctx.op("Add", ctx.scalar(1.0), ctx.op("Erf", ctx.op("Mul", x, ctx.scalar(1 / math.sqrt(2))))), ctx.scalar(0.5))
        pdf = ctx.op("Mul", ctx.op("Exp", ctx.op("Mul", ctx.op("Mul", x, x), ctx.scalar(-0.5))), ctx.scalar(1 / math.sqrt(2 * math.pi)))
        local = ctx.op("Add", cdf, ctx.op("Mul", x, pdf))
    return [ctx.op("Mul", ctx.dy[0], local)]


def _softmax_axis(ctx: RuleContext) -> int:
    if ctx.opset < 13:
        raise ctx.unsupported("Softmax before opset 13 (flattening semantics)")
    return ctx.attr("axis", -1)


@register("Softmax")
def softmax(ctx: RuleContext):
    axis = _softmax_axis(ctx)
    y, dy = ctx.y, ctx.dy[0]
    inner = ctx.op("ReduceSum", ctx.op("Mul", dy, y), ctx.ints([axis]), keepdims=1)
    return [ctx.op("Mul", y, ctx.op("Sub", dy, inner))]


@register("LogSoftmax")
def log_softmax(ctx: RuleContext):
    axis = _softmax_axis(ctx)
    dy = ctx.dy[0]
    total = ctx.op("ReduceSum", dy, ctx.ints([axis]), keepdims=1)
    return [ctx.op("Sub", dy, ctx.op("Mul", ctx.op("Exp", ctx.y), total))]
