"""Choosing the layer whose activations Grad-CAM weighs.

The default is the one Grad-CAM users pick by hand: the last 4-D activation with a
spatial extent that every path from the image to the logits goes through (the output of
the last convolutional stage, before the head collapses space). Only float values count
as paths: integer shape computations (``Shape(x) -> Gather -> Concat -> Reshape``) carry
no gradient. The channel axis of each value is propagated from the image input, so a
channels-last ``N x 1 x 1 x C`` pooled tensor is never read as a ``1 x C`` "map".
"""

from __future__ import annotations

import dataclasses
import warnings

import onnx_ir as ir

from onnx_explain.augment.graph_facts import Classifier, channel_axes
from onnx_explain.errors import ModelError

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
_NO_DATA = {"Shape", "Size"}  # outputs describe a tensor's shape, not its values
SMALL_MAP = 2  # a map of at most SMALL_MAP x SMALL_MAP cells is allowed but warned about


class SmallTargetLayerWarning(UserWarning):
    """The chosen target layer has a tiny spatial map: the heatmap will be very coarse."""


@dataclasses.dataclass
class Candidate:
    value: ir.Value
    layout: str  # "NCHW" / "NHWC"
    channels: int | None
    height: int | None
    width: int | None
    op_type: str  # producer
    dominates: bool  # every image-to-logits path goes through it
    reason: str | None = None  # why it cannot be a target layer (None: it can)

    @property
    def usable(self) -> bool:
        return self.reason is None

    @property
    def small(self) -> bool:
        return self.height is not None and self.width is not None and self.height <= SMALL_MAP and self.width <= SMALL_MAP

    def describe(self) -> str:
        size = f"{self.channels}x{self.height}x{self.width}"
        note = f"  (not usable: {self.reason})" if self.reason else ("" if self.dominates else "  (bypassed by a skip path)")
        return f"{self.value.name}  [{self.op_type}]  {size} {self.layout}{note}"


def _carries_data(node: ir.Node, value: ir.Value) -> bool:
    return node.op_type not in _NO_DATA and (value.dtype is None or value.dtype in _FLOATS)


def _on_path(graph: ir.Graph, start: ir.Value, end: ir.Value) -> list[ir.Value]:
    """Float values on a data path from ``start`` to ``end``, in graph order."""
    nodes = list(graph)
    reach = {start}
    for node in nodes:
        if any(v is not None and v in reach for v in node.inputs):
            reach.update(o for o in node.outputs if _carries_data(node, o))
    back = {end}
    for node in reversed(nodes):
        if any(o in back for o in node.outputs):
            back.update(v for v in node.inputs if v is not None)
    order = [start] + [o for n in nodes for o in n.outputs]
    return [v for v in order if v in reach and v in back]


def _dominates(graph: ir.Graph, cut: ir.Value, start: ir.Value, end: ir.Value) -> bool:
    """Whether every data path from ``start`` to ``end`` goes through ``cut``."""
    reach = {start}
    for node in graph:
        if any(v is not None and v is not cut and v in reach for v in node.inputs):
            reach.update(o for o in node.outputs if _carries_data(node, o))
    return end not in reach


def layer_report(graph: ir.Graph, clf: Classifier) -> list[Candidate]:
    """Every 4-D float value between the image and the logits, in graph order, each with
    the reason it cannot be a target layer (``None`` when it can)."""
    axes = channel_axes(graph, clf)
    out = []
    for v in _on_path(graph, clf.image, clf.logits):
        if v is clf.image or v.shape is None or len(v.shape) != 4:
            continue
        layout = "NHWC" if axes.get(v) == 3 else "NCHW"
        dims = [d if isinstance(d, int) else None for d in v.shape]
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        reason = None
        if h is None or w is None:
            reason = "unknown size (give the input size, or check the graph's shapes)"
        elif h * w <= 1:
            reason = "no spatial extent (1x1)"
        elif (h == 1 or w == 1) and c == 1:
            reason = f"no spatial extent ({h}x{w} with one channel: a flattened vector, not a map)"
        producer = v.producer()
        dom = _dominates(graph, v, clf.image, clf.logits)
        out.append(Candidate(v, layout, c, h, w, producer.op_type if producer else "input", dom, reason))
    return out


def choose_target_layer(graph: ir.Graph, clf: Classifier, name: str | None = None) -> Candidate:
    """The value named ``name``, or the default: the last usable one on every path.

    Warns (:class:`SmallTargetLayerWarning`) when the map is ``SMALL_MAP`` x ``SMALL_MAP``
    or smaller."""
    report = layer_report(graph, clf)
    if name is not None:
        chosen = next((c for c in report if c.value.name == name), None)
        if chosen is None:
            names = {o.name for n in graph for o in n.outputs} | {v.name for v in graph.inputs}
            if name in names:
                raise ModelError(f"layer {name!r} is not a 4-D float activation on a path from the image to the "
                                 "logits (see `onnx-explain inspect` for candidates)")
            raise ModelError(f"no value named {name!r} in the model (see `onnx-explain inspect` for candidates)")
        if not chosen.usable:
            raise ModelError(f"layer {name!r} cannot be a target layer: {chosen.reason}")
    else:
        chosen = next((c for c in reversed(report) if c.usable and c.dominates), None)
        if chosen is None:
            if not report:
                raise ModelError("found no 4-D activation between the image and the logits")
            why = "; ".join(sorted({c.reason or "bypassed by a skip path" for c in report}))
            raise ModelError("found no 4-D activation with a spatial extent that all paths to the logits go "
                             f"through ({why}); name one with --layer (see `onnx-explain inspect`)")
    if chosen.small:
        warnings.warn(f"target layer {chosen.value.name!r} has a {chosen.height}x{chosen.width} map: "
                      "the heatmap will be very coarse", SmallTargetLayerWarning, stacklevel=2)
    return chosen
