"""Max, Min, Mean over any number of broadcasting inputs.

Mean sends ``dY / n`` to every input.  Max and Min send the whole gradient to the input
that attains the extreme; where several inputs tie, the first of them takes it (one
sub-gradient, as MaxPool's single arg-max: the gradient's total is conserved, never
doubled).  Each input's share is then summed back over the axes it was broadcast along.
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register
from onnx_explain.autodiff.rules._broadcast import unbroadcast


@register("Mean")
def mean(ctx: RuleContext):
    inputs = ctx.node.inputs
    share = ctx.op("Mul", ctx.dy[0], ctx.scalar(1.0 / len(inputs), ctx.y))
    return [unbroadcast(ctx, share, v, ctx.y) if ctx.needs(i) else None for i, v in enumerate(inputs)]


@register("Max", "Min")
def extreme(ctx: RuleContext):
    inputs, y, dy = ctx.node.inputs, ctx.y, ctx.dy[0]
    if len(inputs) == 1:
        return [dy]
    dtype = y.dtype or ctx.em.float_dtype
    last = max(i for i in range(len(inputs)) if ctx.needs(i))
    grads: list = [None] * len(inputs)
    taken = None  # positions already claimed by an earlier input
    for i, v in enumerate(inputs[: last + 1]):
        hit = ctx.op("Equal", v, y)
        first = hit if taken is None else ctx.op("And", hit, ctx.op("Not", taken))
        if ctx.needs(i):
            grads[i] = unbroadcast(ctx, ctx.op("Mul", dy, ctx.op("Cast", first, to=dtype)), v, y)
        if i < last:
            taken = hit if taken is None else ctx.op("Or", taken, hit)
    return grads
