"""MaxPool (gradient scattered to the arg-max) and AveragePool (spread over the window)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx_ir as ir

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register
from onnx_explain.autodiff.rules._windows import window_of



def _indices_output(ctx: RuleContext) -> ir.Value:
    """MaxPool's arg-max: the model's own Indices output if it has one, else that of a twin
    MaxPool in the gradient graph.

    The forward node is left alone: an Indices output keeps ONNX Runtime from running it in
    its NCHWc layout, which also unfuses the residual Adds downstream and changes the
    model's own outputs in the last bits. The twin costs one pooling pass.
    """
    node = ctx.node
    if len(node.outputs) >= 2 and node.outputs[1].uses():
        return node.outputs[1]
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    _, indices = ctx.em.op_multi("MaxPool", [ctx.x], 2, name_hint="argmax", **attrs)
    indices.type = ir.TensorType(ir.DataType.INT64)
    return indices


@register("MaxPool")
def max_pool(ctx: RuleContext):
    if ctx.attr("storage_order", 0):
        raise ctx.unsupported("MaxPool with column-major storage_order")
    win = window_of(ctx, list(ctx.attr("kernel_shape")))
    indices = _indices_output(ctx)  # flat positions in the whole input tensor
    x, dy = ctx.x, ctx.dy[0]
    flat = ctx.ints([-1])
    zeros = ctx.op("ConstantOfShape", ctx.op("Reshape", ctx.op("Size", x), ctx.ints([1])),
                   value=ir.tensor(np.zeros((1,), dtype=ctx.numpy_dtype(x))))
    # Windows closer than their extent overlap and may share an arg-max, whose gradients
    # must add up: one adding scatter from opset 16; before, scattering is only exact
    # without duplicates, so scatter groups of non-overlapping windows and add them.
    step = [math.ceil(e / s) for e, s in zip(win.extent, win.strides)]
    if ctx.opset >= 16:
        step = [1] * len(step)
    spatial = list(range(2, 2 + len(step)))
    # With ceil_mode, ONNX shape inference (which ONNX Runtime plans its buffers with) may
    # count one window more than ONNX Runtime computes; slicing with explicit ends makes
    # the inferred shapes of the slices the real ones.
    exact = ctx.shape(ctx.y)[2:] == win.out_size
    total = None
    for offsets in itertools.product(*[range(s) for s in step]):
        if any(o >= n for o, n in zip(offsets, win.out_size)):
            continue
        if all(s == 1 for s in step) and exact:
            g, idx = dy, indices
        else:
            ends = [o + (n - 1 - o) // s * s + 1 for o, n, s in zip(offsets, win.out_size, step)]
            args = [ctx.ints(list(offsets)), ctx.ints(ends), ctx.ints(spatial), ctx.ints(step)]
            g, idx = ctx.op("Slice", dy, *args), ctx.op("Slice", indices, *args)
        reduction = {"reduction": "add"} if ctx.opset >= 16 else {}
        part = ctx.op("ScatterElements", zeros, ctx.op("Reshape", idx, flat), ctx.op("Reshape", g, flat), axis=0,
                      **reduction)
        total = part if total is None else ctx.op("Add", total, part)
    return [ctx.op("Reshape", total, ctx.shape_of(x))]


def _divisors(win, ceil_mode: bool, include_pad: bool) -> np.ndarray:
    """Per-output-position divisor of AveragePool, as ONNX Runtime computes it."""
    per_axis = []
    for i in range(len(win.kernel)):
        d = []
        for o in range(win.out_size[i]):
            start = o * win.strides[i] - win.pad_begin[i]
            end = min(start + win.extent[i], win.in_size[i] + win.pad_end[i])
            if include_pad:
                d.append(end - start)
            else:
                d.append(min(end, win.in_size[i]) - max(start, 0))
        per_axis.append(np.asarray(d, dtype=np.float64))
    out = per_axis[0]
    for a in per_axis[1:]:
        out = np.multiply.outer(out, a)
    return out


@register("AveragePool")
def average_pool(ctx: RuleContext):
    kernel = list(ctx.attr("kernel_shape"))
    win = window_of(ctx, kernel)
    if any(d != 1 for d in win.dilations):
        raise ctx.unsupported("AveragePool with dilations")
    x, dy = ctx.x, ctx.dy[0]
    channels = ctx.shape(x)[1]
    n = len(kernel)
    simple = (
        kernel == win.strides
        and not any(win.pad_begin) and not any(win.pad_end)
        and all(o * k <= i for o, k, i in zip(win.out_size, kernel, win.in_size))
    )
    if simple and n == 2 and channels is not None:
        # Non-overlapping windows: repeat each gradient over its window (fast, no ConvTranspose).
        kh, kw = kernel
        ho, wo = win.out_size
        g = ctx.op("Mul", dy, ctx.scalar(1.0 / (kh * kw), dy))
        g = ctx.op("Reshape", g, ctx.ints([0, channels, ho, 1, wo, 1]))
        g = ctx.op("Expand", g, ctx.ints([1, 1, 1, kh, 1, kw]))
        g = ctx.op("Reshape", g, ctx.ints([0, channels, ho * kh, wo * kw]))
        rest = [i - o * k for i, o, k in zip(win.in_size, win.out_size, kernel)]
        if any(rest):
            g = ctx.op("Pad", g, ctx.ints([0, 0, 0, 0, 0, 0] + rest))
        return [g]
    if channels is None:
        raise ctx.unsupported("AveragePool with a dynamic channel count")
    divisors = _divisors(win, bool(ctx.attr("ceil_mode", 0)), bool(ctx.attr("count_include_pad", 0)))
    dtype = ctx.numpy_dtype(x)
    g = ctx.op("Div", dy, ctx.em.const(divisors.reshape((1, 1) + divisors.shape).astype(dtype)))
    ones = ctx.em.const(np.ones([channels, 1] + kernel, dtype=dtype))
    natural = [(o - 1) * s + k - b - e for o, s, k, b, e in zip(win.out_size, win.strides, kernel, win.pad_begin, win.pad_end)]
    missing = [i - nat for i, nat in zip(win.in_size, natural)]
    out_pad = [min(max(m, 0), s - 1) for m, s in zip(missing, win.strides)]
    g = ctx.op("ConvTranspose", g, ones, kernel_shape=kernel, strides=win.strides,
               pads=win.pad_begin + win.pad_end, output_padding=out_pad, group=channels)
    fix = [m - p for m, p in zip(missing, out_pad)]
    if any(fix):
        from onnx_explain.autodiff.rules.routing import _pad_or_crop

        g = _pad_or_crop(ctx, g, [0] * (2 + n), [0, 0] + fix)
    return [g]
