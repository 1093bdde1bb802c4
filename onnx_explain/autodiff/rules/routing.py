"""Ops that only move values around: the gradient is routed back, never scaled."""

from __future__ import annotations

import numpy as np

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register

INT64_MAX = np.iinfo(np.int64).max


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_back(ctx: RuleContext):
    return [ctx.op("Reshape", ctx.dy[0], ctx.shape_of(ctx.x))] + [None] * (len(ctx.node.inputs) - 1)


@register("Transpose")
def transpose(ctx: RuleContext):
    rank = len(ctx.shape(ctx.x))
    perm = ctx.attr("perm") or list(reversed(range(rank)))
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ctx.op("Transpose", ctx.dy[0], perm=inverse)]


@register("Concat")
def concat(ctx: RuleContext):
    axis = ctx.attr("axis")
    sizes = []
    for v in ctx.node.inputs:
        dims = ctx.shape(v)
        a = axis % len(dims)
        if dims[a] is None:
            raise ctx.unsupported(f"dynamic size along the concat axis for {v.name!r}")
        sizes.append(dims[a])
    parts = ctx.em.op_multi("Split", [ctx.dy[0], ctx.ints(sizes)], len(sizes), axis=axis)
    return [p if ctx.needs(i) else None for i, p in enumerate(parts)]


@register("Split")
def split(ctx: RuleContext):
    axis = ctx.attr("axis", 0)
    parts = [g if g is not None else ctx.zeros_like(out) for g, out in zip(ctx.dy, ctx.node.outputs)]
    dx = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=axis)
    return [dx] + [None] * (len(ctx.node.inputs) - 1)


def _pad_or_crop(ctx: RuleContext, value, begin: list[int], end: list[int]):
    """Pad with zeros where positive, crop where negative (per axis, all axes listed)."""
    pos = [max(p, 0) for p in begin + end]
    if any(pos):
        value = ctx.op("Pad", value, ctx.ints(pos))
    neg_b = [max(-p, 0) for p in begin]
    neg_e = [max(-p, 0) for p in end]
    if any(neg_b) or any(neg_e):
        axes = [i for i in range(len(begin)) if neg_b[i] or neg_e[i]]
        starts = [neg_b[i] for i in axes]
        ends = [-neg_e[i] if neg_e[i] else INT64_MAX for i in axes]
        value = ctx.op("Slice", value, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes))
    return value


def _slice_bounds(start: int, end: int, step: int, n: int) -> tuple[int, int]:
    """ONNX Slice's clamped (start, end) on an axis of size ``n``.

    Not Python's ``slice.indices``: with a negative step ONNX clamps ``start`` into
    ``[0, n-1]`` (a start before the beginning still takes element 0), Python into ``[-1, n-1]``.
    """
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return min(max(start, 0), n), min(max(end, 0), n)
    return min(max(start, 0), n - 1), min(max(end, -1), n - 1)


@register("Slice")
def slice_(ctx: RuleContext):
    x = ctx.x
    dims = ctx.shape(x)
    rank = len(dims)
    starts = ctx.require_constant(ctx.input(1), "Slice starts")
    ends = ctx.require_constant(ctx.input(2), "Slice ends")
    axes_v = ctx.constant(ctx.input(3)) if ctx.input(3) is not None else None
    steps_v = ctx.constant(ctx.input(4)) if ctx.input(4) is not None else None
    axes = list(axes_v) if axes_v is not None else list(range(len(starts)))
    steps = list(steps_v) if steps_v is not None else [1] * len(starts)
    begin, end = [0] * rank, [0] * rank
    dy = ctx.dy[0]
    flip_axes = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        n = dims[a]
        if n is None:
            raise ctx.unsupported(f"Slice along dynamic axis {a}")
        if st not in (1, -1):
            raise ctx.unsupported(f"Slice step {st}")
        first, stop = _slice_bounds(int(s), int(e), int(st), n)
        if st == 1:
            count = max(stop - first, 0)
            begin[a], end[a] = first, n - first - count
        else:
            count = max(first - stop, 0)
            # elements first, first-1, ..., first-count+1: reversed, they occupy [first-count+1, first]
            low = first - count + 1
            begin[a], end[a] = low, n - first - 1
            flip_axes.append(a)
    if flip_axes:
        dy = ctx.op(
            "Slice", dy, ctx.ints([-1] * len(flip_axes)), ctx.ints([-INT64_MAX] * len(flip_axes)),
            ctx.ints(flip_axes), ctx.ints([-1] * len(flip_axes)),
        )
    return [_pad_or_crop(ctx, dy, begin, end)] + [None] * (len(ctx.node.inputs) - 1)


@register("Pad")
def pad(ctx: RuleContext):
    mode = ctx.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        raise ctx.unsupported(f"Pad mode {mode!r}")
    rank = len(ctx.shape(ctx.x))
    pads = [int(p) for p in ctx.require_constant(ctx.input(1), "Pad pads")]
    axes_v = ctx.constant(ctx.input(3)) if ctx.input(3) is not None else None
    axes = [int(a) % rank for a in axes_v] if axes_v is not None else list(range(rank))
    begin, end = [0] * rank, [0] * rank
    k = len(axes)
    for i, a in enumerate(axes):
        begin[a], end[a] = -pads[i], -pads[i + k]
    return [_pad_or_crop(ctx, ctx.dy[0], begin, end)] + [None] * (len(ctx.node.inputs) - 1)
