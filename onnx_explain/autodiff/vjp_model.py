"""A generic vector-Jacobian model: the building block the rule tests check."""

from __future__ import annotations

from typing import Sequence

import onnx
import onnx_ir as ir

from onnx_explain.autodiff.reverse import build_vjp
from onnx_explain.ir_utils import load_for_rewriting


def add_vjp(model: onnx.ModelProto, outputs: Sequence[str], wrt: Sequence[str], mode: str = "plain") -> onnx.ModelProto:
    """Return ``model`` extended with inputs ``grad_<out>`` and outputs ``grad_<wrt>``.

    ``grad_<wrt> = d sum_i(grad_<out_i> * out_i) / d wrt``: the vector-Jacobian product.
    """
    irm = load_for_rewriting(model, image=False)
    graph = irm.graph
    values = {v.name: v for v in _all_values(graph)}
    seeds = {}
    for name in outputs:
        v = values[name]
        # Symbolic dims: inferred output sizes can disagree with ONNX Runtime's (a ceil_mode
        # pool whose last window starts in the padding), and the seed must take the real ones.
        shape = None if v.shape is None else ir.Shape([f"{name}_d{i}" for i in range(len(v.shape))])
        seed = ir.Value(name=f"grad_{name}", shape=shape, type=v.type)
        graph.inputs.append(seed)
        seeds[v] = seed
    targets = [values[n] for n in wrt]
    grads = build_vjp(graph, seeds, targets, mode=mode)
    for name, v in zip(wrt, targets):
        g = grads[v]
        ident = ir.Node("", "Identity", [g], num_outputs=1, name=f"grad_{name}/out")
        ident.outputs[0].name = f"grad_{name}"
        ident.outputs[0].shape = v.shape
        ident.outputs[0].type = v.type
        graph.append(ident)
        graph.outputs.append(ident.outputs[0])
    graph.sort()
    return ir.to_proto(irm)


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs
