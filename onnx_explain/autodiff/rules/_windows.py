"""Sliding-window geometry shared by Conv and pooling rules."""

from __future__ import annotations

import dataclasses
import math

from onnx_explain.autodiff.context import RuleContext


@dataclasses.dataclass
class Window:
    """Explicit geometry of an N-d sliding window (per spatial axis lists)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pad_begin: list[int]
    pad_end: list[int]
    in_size: list[int]
    out_size: list[int]

    @property
    def extent(self) -> list[int]:
        return [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations)]


def window_of(ctx: RuleContext, kernel: list[int]) -> Window:
    """The node's window geometry; output sizes are computed here, as ONNX Runtime does.

    Not read from shape inference: with ``ceil_mode`` ONNX shape inference (onnx 1.23) keeps a
    last window that starts in the end padding, which ONNX Runtime (and PyTorch) drop.
    """
    x_dims = ctx.shape(ctx.x)
    n = len(kernel)
    in_size = x_dims[2:]
    if any(d is None for d in in_size):
        raise ctx.unsupported("sliding windows need static spatial sizes")
    strides = list(ctx.attr("strides") or [1] * n)
    dilations = list(ctx.attr("dilations") or [1] * n)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            total = max(0, (math.ceil(in_size[i] / strides[i]) - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - in_size[i])
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = list(ctx.attr("pads") or [0] * (2 * n))
        begin, end = pads[:n], pads[n:]
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    out_size = []
    for i in range(n):
        span = in_size[i] + begin[i] + end[i] - (dilations[i] * (kernel[i] - 1) + 1)
        out = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= in_size[i] + begin[i]:
            out -= 1  # the last window would start in the end padding: dropped
        out_size.append(out)
    return Window(list(kernel), strides, dilations, begin, end, list(in_size), out_size)
