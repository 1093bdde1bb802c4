"""Keep the gradient's elementwise masks in ONNX Runtime's blocked NCHWc layout.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) and converts
every tensor that meets an operator its layout pass does not know back to NCHW
(``ReorderOutput``) and forth again (``ReorderInput``).  The backward of ReLU / ReLU6 is
exactly such an operator chain (``Greater`` / ``Less`` / ``And`` / ``Cast`` / ``Mul``)
between two convolutions, so every mask paid a reorder of the activation, one of the
gradient and one back: about half of what the input gradient costs above the forward.

Elementwise operators do not care about layout as long as all their tensor operands share
it, so on a graph ONNX Runtime has already optimized this pass lets them read and write the
NCHWc tensors directly: a tensor operand coming out of a ``ReorderOutput`` is read before
the reorder, an NCHW operand of the same shape is reordered in once, and a
``ReorderInput`` of the result is skipped; a gradient sum that meets a convolution's
output becomes that convolution accumulating onto the other operand, as ONNX Runtime
fuses a forward residual ``Add``.  The operators compute the same numbers in another
memory order (to the bit, but for the accumulation's rounding order); the blocked
layout's padding channels hold finite values that the next convolution multiplies by zero
weights, which is why only operators that keep finite values finite are moved.
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

NCHWC_DOMAIN = "com.microsoft.nchwc"

# Elementwise and finite-preserving (no Div, Log, Sqrt, Pow: 0/0 in padding would be NaN).
_ELEMENTWISE = frozenset({
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "And", "Or", "Not", "Cast",
    "Mul", "Add", "Sub", "Sum", "Where", "Max", "Min", "Neg", "Abs", "Relu",
})


def keep_masks_blocked(optimized: onnx.ModelProto, shapes: Mapping[str, Sequence]) -> tuple[onnx.ModelProto, int]:
    """Rewrite ``optimized`` (ONNX Runtime's own optimized graph); return it and the number
    of operators moved into the blocked layout.

    ``shapes``: channel-first shapes of the graph's NCHW values (from ONNX shape inference
    on the graph before ONNX Runtime optimized it); operands are only combined when their
    channel and spatial sizes are known and equal.
    """
    model = onnx.ModelProto.FromString(optimized.SerializeToString())
    graph = model.graph
    scalars = {i.name for i in graph.initializer if int(np.prod(i.dims)) == 1}
    scalars |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    constants = {i.name for i in graph.initializer} - scalars  # broadcast constants: layout-bound
    graph_outputs = {o.name for o in graph.output}

    def chw(name: str):
        dims = shapes.get(name)
        if dims is None or len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None
        return tuple(dims[1:])

    # NCHW value -> (its blocked twin, channels, (C, H, W)), from ONNX Runtime's reorders.
    blocked: dict[str, tuple[str, int, tuple]] = {}
    for node in graph.node:
        if _is(node, "ReorderOutput") and not _attr(node, "channels_last", 0) and chw(node.output[0]):
            blocked[node.output[0]] = (node.input[0], _attr(node, "channels", 0), chw(node.output[0]))

    moved: list[onnx.NodeProto] = []
    reorder_in: dict[str, str] = {}  # NCHW operand reordered in once, shared by its users
    new_reorders: list[tuple[int, onnx.NodeProto]] = []
    for position, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _ELEMENTWISE:
            continue
        tensors = [i for i in node.input if i and i not in scalars]
        if not tensors or not any(i in blocked for i in tensors) or any(i in constants for i in tensors):
            continue
        geometry = {blocked[i][2] if i in blocked else chw(i) for i in tensors}
        if len(geometry) != 1 or None in geometry or not chw(node.output[0]):
            continue
        (c, h, w), = geometry
        for i, name in enumerate(node.input):
            if not name or name in scalars:
                continue
            if name not in blocked:  # an NCHW operand of the same shape: reorder it in once
                if name not in reorder_in:
                    reorder_in[name] = f"{name}/nchwc"
                    new_reorders.append((position, helper.make_node("ReorderInput", [name], [reorder_in[name]], domain=NCHWC_DOMAIN)))
                node.input[i] = reorder_in[name]
            else:
                node.input[i] = blocked[name][0]
        original = node.output[0]
        node.output[0] = f"{original}/nchwc"
        blocked[original] = (node.output[0], c, (c, h, w))
        moved.append(node)

    if not moved:
        return model, 0
    _reconnect(graph, moved, blocked, graph_outputs, new_reorders)
    _accumulate_into_convolutions(graph, graph_outputs)
    return model, len(moved)


def _accumulate_into_convolutions(graph, graph_outputs) -> None:
    """``Sum(conv(x), other)`` in the blocked layout becomes ``conv(x)`` accumulating onto
    ``other`` (the NCHWc convolution's optional fourth input, as ONNX Runtime itself fuses a
    residual ``Add``): one pass less per gradient accumulation."""
    producer = {out: node for node in graph.node for out in node.output}
    readers = collections.Counter(name for node in graph.node for name in node.input)
    fused: dict[int, onnx.NodeProto] = {}  # id(Sum) -> the convolution that replaces it
    for node in graph.node:
        if node.op_type not in ("Sum", "Add") or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        if not node.output[0].endswith("/nchwc"):  # moved here: both operands are blocked
            continue
        for mine, other in ((0, 1), (1, 0)):
            conv = producer.get(node.input[mine])
            if (conv is None or not _is(conv, "Conv") or len(conv.input) > 3 or any(a.name == "activation" for a in conv.attribute)
                    or readers[conv.output[0]] != 1 or conv.output[0] in graph_outputs):
                continue
            conv.input.extend([""] * (3 - len(conv.input)) + [node.input[other]])
            conv.output[0] = node.output[0]
            fused[id(node)] = conv
            break
    if not fused:
        return
    moved_convs = {id(c) for c in fused.values()}
    nodes = []
    for node in graph.node:  # the convolution now runs where the sum did: after ``other``
        if id(node) in moved_convs:
            continue
        nodes.append(fused.get(id(node), node))
    del graph.node[:]
    graph.node.extend(nodes)


def _reconnect(graph, moved, blocked, graph_outputs, new_reorders) -> None:
    """Feed convolutions straight from the moved operators; reorder back only for others."""
    moved_ids = {id(n) for n in moved}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    dropped: set[int] = set()
    after: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in moved:
        original = node.output[0][: -len("/nchwc")]
        users = [u for u in consumers[original] if id(u) not in moved_ids]
        still_nchw = original in graph_outputs
        for user in users:
            if _is(user, "ReorderInput") and not _attr(user, "channels_last", 0):
                for follower in consumers[user.output[0]]:
                    follower.input[:] = [node.output[0] if x == user.output[0] else x for x in follower.input]
                dropped.add(id(user))
            else:
                still_nchw = True
        if still_nchw:
            after[id(node)].append(helper.make_node(
                "ReorderOutput", [node.output[0]], [original], domain=NCHWC_DOMAIN, channels=blocked[original][1]))
    before = collections.defaultdict(list)
    for position, reorder in new_reorders:
        before[position].append(reorder)
    nodes = []
    for position, node in enumerate(graph.node):
        nodes.extend(before[position])
        if id(node) not in dropped:
            nodes.append(node)
            nodes.extend(after[id(node)])
    read = {name for node in nodes for name in node.input} | graph_outputs
    nodes = [n for n in nodes if not (_is(n, "ReorderOutput") and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(nodes)


def _is(node: onnx.NodeProto, op_type: str) -> bool:
    return node.domain == NCHWC_DOMAIN and node.op_type == op_type


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def ort_optimized_graph(model: onnx.ModelProto, providers: Sequence[str], scratch: str) -> onnx.ModelProto:
    """ONNX Runtime's fully optimized graph of ``model``, its weights left in a file of their
    own in ``scratch`` (the graph read, rewritten and written back stays small: ResNet-50's
    optimized weights are 200 MB)."""
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = os.path.join(scratch, "optimized.onnx")
    options.log_severity_level = 3
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(model.SerializeToString(), options, providers=list(providers))
    return onnx.load(options.optimized_model_filepath, load_external_data=False)


def blocked_mask_session(model: onnx.ModelProto, options, providers: Sequence[str], scratch: str):
    """An ONNX Runtime CPU session of ``model`` with its masks kept in the blocked layout, or
    ``None`` when ONNX Runtime's optimized graph leaves nothing to move.

    The rewritten graph is written beside its weights in ``scratch`` and loaded with only the
    basic optimizations, which do not undo it.
    """
    import os

    import onnxruntime as ort

    optimized = ort_optimized_graph(model, providers, scratch)
    rewritten, moved = keep_masks_blocked(optimized, channel_first_shapes(model))
    if not moved:
        return None
    path = os.path.join(scratch, "rewritten.onnx")  # beside weights.bin, which it refers to
    onnx.save(rewritten, path)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(path, options, providers=list(providers))


def channel_first_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Shapes of the graph's values by ONNX shape inference, the large weights passed as
    inputs of their size (only their sizes matter, their contents are not copied)."""
    graph = model.graph
    weights = [i for i in graph.initializer if int(np.prod(i.dims)) > 256]
    light = helper.make_model(
        helper.make_graph(
            graph.node, "shapes",
            list(graph.input) + [helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)) for w in weights],
            graph.output,
            [i for i in graph.initializer if int(np.prod(i.dims)) <= 256],
        ),
        opset_imports=model.opset_import, ir_version=model.ir_version,
    )
    inferred = onnx.shape_inference.infer_shapes(light)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
