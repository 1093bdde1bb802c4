"""The shared state of one augmentation: what the passes found and built so far."""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from onnx_explain.augment.graph_facts import Classifier
from onnx_explain.augment.target_layer import Candidate
from onnx_explain.autodiff.emitter import Emitter
from onnx_explain.autodiff.reverse import opset_of


@dataclasses.dataclass
class ExplainPlan:
    classifier: Classifier
    layer: Candidate
    input_gradients: bool = False
    guided: bool = False
    gradcam: bool = False
    seed: ir.Value | None = None
    activations: ir.Value | None = None
    grad_activations: ir.Value | None = None
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    _emitters: dict[str, Emitter] = dataclasses.field(default_factory=dict)

    def emitter(self, graph: ir.Graph, prefix: str) -> Emitter:
        if prefix not in self._emitters:
            self._emitters[prefix] = Emitter(graph, prefix=prefix, float_dtype=self.classifier.logits.dtype or ir.DataType.FLOAT)
        return self._emitters[prefix]

    def add_output(self, graph: ir.Graph, name: str, value: ir.Value, dtype: Any, dims: list) -> None:
        """Expose ``value`` as graph output ``name`` (through an Identity, so names stay stable)."""
        node = ir.Node("", "Identity", [value], num_outputs=1, name=f"output/{name}")
        out = node.outputs[0]
        out.name = name
        out.type = ir.TensorType(dtype)
        out.shape = ir.Shape(dims)
        graph.append(node)
        graph.outputs.append(out)
        self.outputs[name] = name

    @staticmethod
    def reduce(em: Emitter, op: str, x: ir.Value, axes: list[int]) -> ir.Value:
        """ReduceMax/Min/Mean with ``axes`` as attribute (opset < 18) or input (>= 18)."""
        if opset_of(em.graph) >= 18:
            return em.op(op, x, em.ints(axes), keepdims=1)
        return em.op(op, x, axes=axes, keepdims=1)
