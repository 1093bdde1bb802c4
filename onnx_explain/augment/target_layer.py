"""Choosing the layer whose activations Grad-CAM weighs.

The default is the one Grad-CAM users pick by hand: the last 4-D activation with a
spatial extent that every path from the image to the logits goes through (the output of
the last convolutional stage, before the head collapses space).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnx_explain.augment.graph_facts import Classifier, activation_layout
from onnx_explain.errors import ModelError

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16}


@dataclasses.dataclass
class Candidate:
    value: ir.Value
    layout: str  # "NCHW" / "NHWC"
    channels: int | None
    height: int | None
    width: int | None
    op_type: str  # producer
    dominates: bool  # every image-to-logits path goes through it

    def describe(self) -> str:
        return (f"{self.value.name}  [{self.op_type}]  {self.channels}x{self.height}x{self.width}"
                + ("" if self.dominates else "  (bypassed by a skip path)"))


def _on_path(graph: ir.Graph, start: ir.Value, end: ir.Value) -> list[ir.Value]:
    nodes = list(graph)
    reach = {start}
    for node in nodes:
        if any(v is not None and v in reach for v in node.inputs):
            reach.update(node.outputs)
    back = {end}
    for node in reversed(nodes):
        if any(o in back for o in node.outputs):
            back.update(v for v in node.inputs if v is not None)
    order = [start] + [o for n in nodes for o in n.outputs]
    return [v for v in order if v in reach and v in back]


def _dominates(graph: ir.Graph, cut: ir.Value, start: ir.Value, end: ir.Value) -> bool:
    reach = {start}
    for node in graph:
        if any(v is not None and v is not cut and v in reach for v in node.inputs):
            reach.update(node.outputs)
    return end not in reach


def candidate_layers(graph: ir.Graph, clf: Classifier, check_dominance: bool = True) -> list[Candidate]:
    """4-D spatial activations between the image and the logits, in graph order."""
    out = []
    for v in _on_path(graph, clf.image, clf.logits):
        if v is clf.image or v.shape is None or len(v.shape) != 4 or v.dtype not in _FLOATS:
            continue
        layout = activation_layout(v, clf)
        dims = [d if isinstance(d, int) else None for d in v.shape]
        c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
        if h is None or w is None or h * w <= 1:
            continue
        dom = _dominates(graph, v, clf.image, clf.logits) if check_dominance else True
        out.append(Candidate(v, layout, c, h, w, v.producer().op_type if v.producer() else "input", dom))
    return out


def choose_target_layer(graph: ir.Graph, clf: Classifier, name: str | None = None) -> Candidate:
    if name is not None:
        for cand in candidate_layers(graph, clf, check_dominance=False):
            if cand.value.name == name:
                return cand
        names = {o.name for n in graph for o in n.outputs}
        if name in names:
            raise ModelError(f"layer {name!r} is not a 4-D spatial activation between the image and the logits")
        raise ModelError(f"no value named {name!r} in the model (see `onnx-explain inspect` for candidates)")
    for cand in reversed(candidate_layers(graph, clf, check_dominance=False)):
        if _dominates(graph, cand.value, clf.image, clf.logits):
            cand.dominates = True
            return cand
    raise ModelError("found no 4-D spatial activation that all paths to the logits go through; name one with --layer")
