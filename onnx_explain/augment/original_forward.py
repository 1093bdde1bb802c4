"""The explain model's forward: the original file's own nodes, where they can be kept.

The analysis needs a normalised graph (shape computations folded, pads folded into
convolutions, shapes inferred), and the gradient nodes are built on it. But ONNX Runtime
optimises what it is given: a Reshape target folded to a constant, or a shape it can now
infer, lets it fuse a residual ``Add`` into a convolution that it did not fuse in the
original file, and the model's own outputs move by a rounding (timm's SK and split-attention
blocks, ViT). So the file written is the original graph, node for node, with its own
value_info, plus the nodes the augmenter added; those read only values that the original
computes under the same names (the normalisation never changes a float value) or constants
it made. Where that does not hold (an upgraded opset, a ``pixels`` input in front, an added
node reading a value the original does not have), the normalised forward is kept.
"""

from __future__ import annotations

import onnx

from onnx_explain.normalize import MIN_OPSET, opset_of


def _used_names(nodes) -> set[str]:
    """Every value name the nodes read, their subgraphs' outer-scope reads included."""
    names: set[str] = set()
    for node in nodes:
        names.update(n for n in node.input if n)
        for attr in node.attribute:
            for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                inner = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
                inner |= {i.name for i in graph.initializer}
                names.update(_used_names(graph.node) - inner)
    return names


def _live(nodes: list, outputs: set[str]) -> list:
    """``nodes`` less those no graph output depends on (a dead branch of the original)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(_used_names([node]))
    return kept[::-1]


def with_original_forward(original: onnx.ModelProto, augmented: onnx.ModelProto,
                          added: list[bool]) -> onnx.ModelProto:
    """``augmented`` with its forward nodes replaced by ``original``'s; ``added[i]`` tells
    whether ``augmented.graph.node[i]`` is one the augmenter added. Returns ``augmented``
    unchanged where the original forward cannot serve."""
    if opset_of(original) < MIN_OPSET or opset_of(original) != opset_of(augmented) or original.ir_version < 4:
        return augmented  # upgraded: the original nodes have other semantics
    if len(added) != len(augmented.graph.node):
        return augmented
    graph = augmented.graph
    new_nodes = [n for n, is_new in zip(graph.node, added) if is_new]
    forward = original.graph
    inputs = {i.name for i in graph.input}
    produced = {o for n in forward.node for o in n.output} | {i.name for i in forward.initializer} | inputs
    if not _used_names(forward.node) <= produced:
        return augmented  # the original reads an input the explain model no longer has (pixels)
    made, reads = {o for n in new_nodes for o in n.output}, _used_names(new_nodes)
    carried = [t for t in graph.initializer if t.name not in produced and t.name in reads]
    available = produced | made | {t.name for t in carried}
    if not reads <= available or not {o.name for o in graph.output} <= available:
        return augmented
    result = onnx.ModelProto()
    result.CopyFrom(augmented)
    g = result.graph
    del g.node[:], g.initializer[:], g.value_info[:]
    g.node.extend(_live(list(forward.node) + new_nodes, {o.name for o in graph.output}))
    read = _used_names(g.node) | {o.name for o in graph.output} | inputs
    g.initializer.extend(t for t in list(forward.initializer) + carried if t.name in read)
    g.value_info.extend([v for v in forward.value_info if v.name in produced and v.name not in inputs])
    g.value_info.extend([v for v in graph.value_info if v.name in made])
    del g.sparse_initializer[:]
    g.sparse_initializer.extend(forward.sparse_initializer)
    return result
