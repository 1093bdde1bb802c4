"""LRN: local response normalisation across channels (AlexNet, GoogLeNet, SqueezeNet v1).

``y = x * s^-beta`` with ``s = bias + alpha/size * sum of x^2 over a window of channels``
(``floor((size-1)/2)`` before, ``ceil((size-1)/2)`` after).  Then
``dx = dy * s^-beta - (2 alpha beta / size) * x * W^T(dy * y / s)``, where ``W^T`` sums over
the mirrored window.  Both window sums are an ``AveragePool`` over the channel axis of the
tensor viewed as ``N x 1 x C x rest`` (``count_include_pad``, so it divides by ``size``):
``size`` reads per element, no static size but C's, no weight tensor.
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


def _channel_window_mean(ctx: RuleContext, value, channels: int, size: int, before: int, after: int):
    view = ctx.op("Reshape", value, ctx.ints([0, 1, channels, -1]))
    pooled = ctx.op("AveragePool", view, kernel_shape=[size, 1], pads=[before, 0, after, 0], count_include_pad=1)
    return ctx.op("Reshape", pooled, ctx.shape_of(value))


@register("LRN")
def lrn(ctx: RuleContext):
    x, y, dy = ctx.x, ctx.y, ctx.dy[0]
    channels = ctx.shape(x)[1]
    if channels is None:
        raise ctx.unsupported("LRN with a dynamic channel count")
    size = ctx.attr("size")
    alpha, beta, bias = ctx.attr("alpha", 1e-4), ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    before, after = (size - 1) // 2, size // 2  # floor and ceil of (size-1)/2
    mean_sq = _channel_window_mean(ctx, ctx.op("Mul", x, x), channels, size, before, after)
    s = ctx.op("Add", ctx.op("Mul", mean_sq, ctx.scalar(alpha)), ctx.scalar(bias))
    direct = ctx.op("Mul", dy, ctx.op("Pow", s, ctx.scalar(-beta)))
    t = ctx.op("Div", ctx.op("Mul", dy, y), s)
    spread = _channel_window_mean(ctx, t, channels, size, after, before)  # the mirrored window
    cross = ctx.op("Mul", ctx.op("Mul", x, spread), ctx.scalar(2.0 * alpha * beta))
    return [ctx.op("Sub", direct, cross)]
