"""DepthToSpace and SpaceToDepth: pure permutations of the elements, undone by the inverse.

SpaceToDepth is the exact inverse of DepthToSpace in ``DCR`` mode (the default), so each
is the other's gradient.  ``CRD`` mode (PixelShuffle as exported by torch) has no single
inverse operator: its gradient is the inverse reshape-transpose-reshape.
"""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register


def _mode(ctx: RuleContext) -> str:
    mode = ctx.attr("mode", "DCR")
    return mode.decode() if isinstance(mode, bytes) else mode


@register("DepthToSpace")
def depth_to_space(ctx: RuleContext):
    b = ctx.attr("blocksize")
    dy = ctx.dy[0]
    mode = _mode(ctx)
    if mode == "DCR":
        return [ctx.op("SpaceToDepth", dy, blocksize=b)]
    if mode != "CRD":
        raise ctx.unsupported(f"DepthToSpace mode {mode!r}")
    # forward: x as N x C/b^2 x b x b x H x W, permuted to N x C/b^2 x H x b x W x b
    _, c, h, w = ctx.static_shape(ctx.x)
    g = ctx.op("Reshape", dy, ctx.ints([0, c // (b * b), h, b, w, b]))
    g = ctx.op("Transpose", g, perm=[0, 1, 3, 5, 2, 4])
    return [ctx.op("Reshape", g, ctx.shape_of(ctx.x))]


@register("SpaceToDepth")
def space_to_depth(ctx: RuleContext):
    return [ctx.op("DepthToSpace", ctx.dy[0], blocksize=ctx.attr("blocksize"), mode="DCR")]
