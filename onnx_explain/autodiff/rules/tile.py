"""Tile: every input element is copied once per repetition, so its gradient is the sum of
the copies' gradients.

The output gradient is viewed with each repeated axis split in two (repetition, original
size) and summed over the repetitions.  Sizes come from the input's static shape, or from
its ``Shape`` at run time when more than one axis is dynamic (the batch stays dynamic).
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


@register("Tile")
def tile(ctx: RuleContext):
    x, dy = ctx.x, ctx.dy[0]
    dims = ctx.shape(x)
    repeats = [int(r) for r in ctx.require_constant(ctx.input(1), "Tile repeats")]
    if any(r < 1 for r in repeats):
        raise ctx.unsupported(f"Tile repeats {repeats}")
    if all(r == 1 for r in repeats):
        return [dy, None]
    summed = []
    static: list[int] = []
    for i, (d, r) in enumerate(zip(dims, repeats)):
        if r != 1:
            summed.append(len(static))
            static.append(r)
        static.append(-1 if d is None else d)
    if static.count(-1) <= 1:
        split = ctx.ints(static)
    else:
        x_shape = ctx.shape_of(x)
        pieces = []
        for i, r in enumerate(repeats):
            if r != 1:
                pieces.append(ctx.ints([r]))
            pieces.append(ctx.op("Slice", x_shape, ctx.ints([i]), ctx.ints([i + 1])))
        split = ctx.op("Concat", *pieces, axis=0)
    folded = ctx.op("ReduceSum", ctx.op("Reshape", dy, split), ctx.ints(summed), keepdims=0)
    return [folded, None]
