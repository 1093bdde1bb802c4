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
    flip_axes, spread = [], []
    current = list(dims)  # dy's sizes, as the spreading below goes on
    for s, e, a, st in zip(starts, ends, axes, steps):
        a, st = int(a) % rank, int(st)
        n = dims[a]
        if n is None:
            raise ctx.unsupported(f"Slice along dynamic axis {a}")
        first, stop = _slice_bounds(int(s), int(e), st, n)
        count = max(-(-(stop - first) // st), 0)  # elements taken: first, first + st, ...
        low = first if st > 0 else first + (count - 1) * st  # the lowest position taken
        if st < 0:
            flip_axes.append(a)  # reversed, they come in ascending order
        if abs(st) > 1 and count > 0:
            spread.append((a, abs(st), count))
        begin[a], end[a] = low, n - low - max(count - 1, 0) * abs(st) - min(count, 1)
        if count == 0:
            begin[a], end[a] = 0, n
        current[a] = count
    if flip_axes:
        dy = ctx.op(
            "Slice", dy, ctx.ints([-1] * len(flip_axes)), ctx.ints([-INT64_MAX] * len(flip_axes)),
            ctx.ints(flip_axes), ctx.ints([-1] * len(flip_axes)),
        )
    for a, stride, count in spread:
        dy = _interleave_zeros(ctx, dy, a, stride, count, current)
        current[a] = (count - 1) * stride + 1
    return [_pad_or_crop(ctx, dy, begin, end)] + [None] * (len(ctx.node.inputs) - 1)


def _interleave_zeros(ctx: RuleContext, dy, axis: int, stride: int, count: int, dims: list):
    """``dy``'s ``count`` elements along ``axis`` placed ``stride`` apart, zeros between,
    the last one's trailing zeros dropped: the positions a strided Slice took (``dims``:
    ``dy``'s sizes)."""
    if any(d is None for d in dims[axis + 1:]):
        raise ctx.unsupported(f"Slice step {stride} along axis {axis} followed by a dynamic axis")
    rank = len(dims)
    wide = ctx.op("Unsqueeze", dy, ctx.ints([axis + 1]))
    pads = [0] * (rank + 1) * 2
    pads[rank + 1 + axis + 1] = stride - 1  # zeros after each element
    wide = ctx.op("Pad", wide, ctx.ints(pads))
    wide = ctx.op("Reshape", wide, ctx.ints([0] * axis + [count * stride] + [int(d) for d in dims[axis + 1:]]))
    return ctx.op("Slice", wide, ctx.ints([0]), ctx.ints([(count - 1) * stride + 1]), ctx.ints([axis]))


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
