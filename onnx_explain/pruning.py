"""The part of an explain graph that a set of requested outputs needs, and nothing more.

ONNX Runtime runs every node of a graph whatever outputs are asked for, so a run that only
needs Grad-CAM's inputs would still pay for the input-gradient subgraph.  Removing the
nodes no output depends on is not all: a forward node may carry an optional output that
only the backward reads, and ONNX Runtime treats such a node differently.  MaxPool with
its arg-max ``Indices`` output cannot run in the blocked NCHWc layout; on ResNet-50 that
made a run of the forward alone 5-9 % slower than the plain model's.  So unread optional
outputs are dropped as well.
"""

from __future__ import annotations

from typing import Sequence

import onnx
from onnx import defs

from onnx_explain.gates import inline_gates


def prune(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str]) -> onnx.ModelProto:
    """The subgraph from ``inputs`` to ``outputs``, without unread optional node outputs.

    Outputs a file computes on demand (behind a flag input, :mod:`onnx_explain.gates`) are
    computed unconditionally in the pruned graph: their branch is spliced back in first.
    """
    model = inline_gates(model, outputs)
    pruned = onnx.utils.Extractor(model).extract_model(list(inputs), list(outputs))
    _drop_unread_optional_outputs(pruned)
    return pruned


def _drop_unread_optional_outputs(model: onnx.ModelProto) -> None:
    graph = model.graph
    read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    for node in graph.node:
        if len(node.output) < 2:
            continue
        optional = _optional_output_flags(node, opsets)
        keep = len(node.output)
        while keep > 1 and optional[keep - 1] and node.output[keep - 1] not in read:
            keep -= 1
        del node.output[keep:]


def _optional_output_flags(node: onnx.NodeProto, opsets: dict[str, int]) -> list[bool]:
    """Per output of ``node``: may it be left out?  All ``False`` for unknown operators."""
    domain = node.domain or ""
    try:
        schema = defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
    except defs.SchemaError:
        return [False] * len(node.output)
    formal = schema.outputs
    flags = []
    for i in range(len(node.output)):
        param = formal[min(i, len(formal) - 1)] if formal else None
        flags.append(param is not None and param.option == defs.OpSchema.FormalParameterOption.Optional)
    return flags
