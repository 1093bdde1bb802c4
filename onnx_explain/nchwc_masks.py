"""Keep the gradient's elementwise masks in ONNX Runtime's blocked NCHWc layout.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) and converts
every tensor that meets an operator its layout pass does not know back to NCHW
(``ReorderOutput``) and forth again (``ReorderInput``).  The backward of ReLU / ReLU6 is
exactly such an operator chain (``Greater`` / ``Less`` / ``And`` / ``Cast`` / ``Mul``)
between two convolutions, so every mask paid a reorder of the activation, one of the
gradient and one back: about half of what the input gradient costs above the forward.
HardSwish's (``Abs`` / ``HardSigmoid`` / ``Mul`` / ``Add``) and the forward HardSwish that
ONNX Runtime expands into ``HardSigmoid`` + ``Mul`` once the backward reads its input are
the same story.

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

Squeeze-excitation gates (a mean over H x W, a per-channel product, and their backward: a
sum over H x W and its spreading back) stay blocked too: a blocked N x C x H x W tensor is,
in memory, N x C/b x H x W x b (b channels per block), so seen through a ``Reshape`` to
five dimensions a per-channel N x C/b x 1 x 1 x b operand broadcasts over it, and a
reduction over axes 2 and 3 is a reduction over H x W, exactly as in NCHW (the sums add in
another order).  Elementwise nodes that repeat another's inputs and attributes are merged
(the forward's hard-sigmoid is the one the HardSwish backward reads again).
"""

from __future__ import annotations

import collections
import functools
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

NCHWC_DOMAIN = "com.microsoft.nchwc"

# Elementwise and finite-preserving (no Div, Log, Sqrt, Pow: 0/0 in padding would be NaN).
_ELEMENTWISE = frozenset({
    "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "And", "Or", "Not", "Cast",
    "Mul", "Add", "Sub", "Sum", "Where", "Max", "Min", "Neg", "Abs", "Relu", "HardSigmoid",
})


def keep_masks_blocked(optimized: onnx.ModelProto, shapes: Mapping[str, Sequence],
                       block: int | None = None) -> tuple[onnx.ModelProto, int]:
    """Rewrite ``optimized`` (ONNX Runtime's own optimized graph); return it and the number
    of operators moved into the blocked layout.

    ``shapes``: channel-first shapes of the graph's NCHW values (from ONNX shape inference
    on the graph before ONNX Runtime optimized it); operands are only combined when their
    channel and spatial sizes are known and equal.  ``block``: channels per NCHWc block
    (default: this machine's, :func:`nchwc_block_size`).
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
    before: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)  # inserted before a position
    then: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> nodes right after it
    views: dict[str, str] = {}  # blocked tensor -> its five-dimensional view
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    block = block or nchwc_block_size()

    def geometry(name: str):
        return blocked[name][2] if name in blocked else chw(name)

    constant_names = {i.name for i in graph.initializer}

    def constant(values: Sequence[int]) -> str:
        name = "nchwc/" + "_".join(str(v) for v in values)
        if name not in constant_names:
            graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
            constant_names.add(name)
        return name

    def blocked_twin(name: str, position: int) -> str:
        if name in blocked:
            return blocked[name][0]
        if name not in reorder_in:  # an NCHW operand: reorder it in once
            reorder_in[name] = f"{name}/nchwc"
            before[position].append(helper.make_node("ReorderInput", [name], [reorder_in[name]], domain=NCHWC_DOMAIN))
        return reorder_in[name]

    def view(name: str, dims: tuple, position: int) -> str:
        """``name`` (blocked, N x C x H x W) seen as N x C/block x H x W x block: per-channel
        operands broadcast over H x W there as they do over an NCHW tensor."""
        twin = blocked_twin(name, position)
        if twin not in views:
            c, h, w = dims
            views[twin] = f"{twin}/5d"
            before[position].append(helper.make_node(
                "Reshape", [twin, constant([0, -(-c // block), h, w, block])], [views[twin]]))
        return views[twin]

    def finish(node: onnx.NodeProto, dims: tuple) -> None:
        """``node`` computes a five-dimensional view; its blocked NCHW twin follows it."""
        original = node.output[0]
        node.output[0] = f"{original}/nchwc5"
        c, h, w = dims
        back = helper.make_node("Reshape", [node.output[0], constant([0, -(-c // block) * block, h, w])], [f"{original}/nchwc"])
        then[id(node)] = [back]
        blocked[original] = (back.output[0], c, dims)
        moved.append(back)

    for position, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _ELEMENTWISE:
            tensors = [i for i in node.input if i and i not in scalars]
            if not tensors or not any(i in blocked for i in tensors) or any(i in constants for i in tensors):
                continue
            shapes_in = {geometry(i) for i in tensors}
            out = chw(node.output[0])
            if None in shapes_in or not out:
                continue
            if len(shapes_in) == 1:  # same shape everywhere: the operator reads the blocked tensors
                (c, h, w), = shapes_in
                for i, name in enumerate(node.input):
                    if name and name not in scalars:
                        node.input[i] = blocked_twin(name, position)
                original = node.output[0]
                node.output[0] = f"{original}/nchwc"
                blocked[original] = (node.output[0], c, (c, h, w))
                moved.append(node)
                continue
            # per-channel operands (N x C x 1 x 1) broadcast over a blocked N x C x H x W one
            if shapes_in != {out, (out[0], 1, 1)} or out[0] % 4 or out[1:] == (1, 1):
                continue
            for i, name in enumerate(node.input):
                if name and name not in scalars:
                    node.input[i] = view(name, geometry(name), position)
            finish(node, out)
        elif node.op_type in ("ReduceSum", "ReduceMean") and node.input[0] in blocked:
            # a mean or sum over H x W (squeeze-excitation) of a blocked tensor
            dims = blocked[node.input[0]][2]
            axes = _reduce_axes(node, graph)
            if axes is None or {a % 4 for a in axes} != {2, 3} or not _attr(node, "keepdims", 1) or len(axes) != 2:
                continue
            if chw(node.output[0]) not in (None, (dims[0], 1, 1)):
                continue
            node.input[0] = view(node.input[0], dims, position)
            if len(node.input) > 1:
                node.input[1] = constant([2, 3])
            else:
                for a in node.attribute:
                    if a.name == "axes":
                        a.ints[:] = [2, 3]
            finish(node, (dims[0], 1, 1))
        elif node.op_type == "Expand":
            # a per-channel tensor spread over H x W (the backward of that mean) for blocked readers
            small, out = geometry(node.input[0]), chw(node.output[0])
            if (not out or small != (out[0], 1, 1) or out[1:] == (1, 1) or out[0] % 4
                    or not all(u.op_type in _ELEMENTWISE for u in consumers[node.output[0]])):
                continue
            batch = shapes.get(node.input[0], [None])[0]  # spread over H x W only, not over N
            if batch is None or batch != shapes.get(node.output[0], [None])[0]:
                continue
            c, h, w = out
            node.input[0] = view(node.input[0], small, position)
            node.input[1] = constant([1, -(-c // block), h, w, block])
            finish(node, out)

    if not moved:
        return model, 0
    _reconnect(graph, moved, blocked, graph_outputs, before, then)
    _share_duplicates(graph, graph_outputs)
    _drop_unread(graph, graph_outputs)  # before: a reorder nobody reads would count as a reader
    _accumulate_into_convolutions(graph, graph_outputs)
    return model, len(moved)


def _reduce_axes(node: onnx.NodeProto, graph) -> list[int] | None:
    """The axes of a reduction, from its attribute or its constant second input."""
    if len(node.input) > 1 and node.input[1]:
        for init in graph.initializer:
            if init.name == node.input[1]:
                return [int(a) for a in numpy_helper.to_array(init).ravel()]
        return None
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    return None


def _drop_unread(graph, graph_outputs) -> None:
    """Remove nodes none of whose outputs is read (a reorder kept only for a ``Shape`` that
    fed a moved ``Expand``, ...)."""
    read = set(graph_outputs)
    kept = []
    for node in reversed(graph.node):
        if any(o and o in read for o in node.output):
            kept.append(node)
            read.update(node.input)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(kept))


def _share_duplicates(graph, graph_outputs) -> None:
    """One node for elementwise operators that repeat another's inputs and attributes: the
    forward ``HardSwish``'s hard-sigmoid (ONNX Runtime expands the operator after its own
    common-subexpression pass) is the one its backward reads again."""
    first: dict[tuple, str] = {}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        if (node.domain in ("", "ai.onnx") and node.op_type in _ELEMENTWISE and len(node.output) == 1
                and node.output[0] not in graph_outputs):
            key = (node.op_type, tuple(node.input), tuple(a.SerializeToString() for a in node.attribute))
            if key in first:
                renamed[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        kept.append(node)
    if renamed:
        del graph.node[:]
        graph.node.extend(kept)


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


def _reconnect(graph, moved, blocked, graph_outputs, before, then) -> None:
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
    nodes = []

    def emit(node):
        nodes.append(node)
        for follower in then.get(id(node), ()):
            emit(follower)
        nodes.extend(after[id(node)])

    for position, node in enumerate(graph.node):
        nodes.extend(before[position])
        if id(node) not in dropped:
            emit(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _is(node: onnx.NodeProto, op_type: str) -> bool:
    return node.domain == NCHWC_DOMAIN and node.op_type == op_type


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


@functools.lru_cache(maxsize=1)
def nchwc_block_size() -> int:
    """Channels per block of ONNX Runtime's NCHWc layout on this machine (8 with AVX2, 16
    with AVX-512): the channel count ``ReorderInput`` pads four channels to."""
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)], "block",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 1, 1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(NCHWC_DOMAIN, 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(session.run(None, {"x": np.zeros((1, 4, 1, 1), np.float32)})[0].shape[1])


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
    inputs of their size (only their sizes matter, their contents are not copied); a
    symbolic dimension is its name, an unknown one ``None``; values of unknown rank absent.

    Data propagation gives the gradient's ``Reshape`` / ``Expand`` to a ``Shape(y)`` their
    dims; where an operator's own inference does not use it (``Reshape`` before opset 14),
    such an output is given y's shape and inference runs again.
    """
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
    producer = {out: node for node in graph.node for out in node.output}
    for _ in range(8):
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
        shapes = {v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]
                  for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
                  if v.type.tensor_type.HasField("shape")}
        given = []
        for node in graph.node:
            if node.op_type not in ("Reshape", "Expand") or node.output[0] in shapes or len(node.input) < 2:
                continue
            source = producer.get(node.input[1])
            if source is None or source.op_type != "Shape" or source.attribute or source.input[0] not in shapes:
                continue
            target = shapes[source.input[0]]
            dims = target if node.op_type == "Reshape" else _broadcast(shapes.get(node.input[0]), target)
            if dims is not None and 0 not in dims:
                given.append(helper.make_tensor_value_info(node.output[0], types.get(node.input[0], 0), dims))
        if not given:
            return shapes
        light.graph.value_info.extend(given)
    return shapes


def _broadcast(a: Sequence | None, b: Sequence) -> list | None:
    """The shape ``Expand`` gives ``a`` with the target ``b`` (``None`` when not known)."""
    if a is None:
        return None
    a, b = [1] * (len(b) - len(a)) + list(a), [1] * (len(a) - len(b)) + list(b)
    out = []
    for x, y in zip(a, b):
        if x == 1 or x == y:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            return None
    return out if None not in out else None
