"""Torch module paths -> ONNX value names: which value in the exported graph is ``layer4``'s output.

Users name target layers the way they know them, as torch module paths (``layer4``,
``features.denseblock4``, ``_blocks.15``); the augmenter needs a value name of the ONNX
graph. The exporters record where each node came from:

* the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) writes, on every node,
  ``metadata_props["pkg.torch.onnx.name_scopes"]``: the list of module paths from the root
  (``''``) down to the node's module, then the FX node name, e.g.
  ``['', 'layer4', 'layer4.1', 'layer4.1.relu', 'relu_16']``;
* the TorchScript exporter (``dynamo=False``) encodes the scope in the node name,
  ``/layer4/layer4.1/relu_1/Relu``: one segment per module on the path, each the module's
  path from its last non-numeric atom on (``layer4.0.downsample.0`` -> ``downsample.0``,
  ``layer4.0`` stays ``layer4.0``), with a ``_N`` suffix on a repeated call.

A module's output is then the output of the last node (graph order, which ONNX requires
to be topological) inside the module's scope that is consumed outside it (or is a graph
output). For a module called several times this is its last call, which is also what a
torch forward hook would keep. Values with a known non-float type (shapes, indices) are
skipped. A module whose ops were all fused into a neighbour (a Conv followed by a
BatchNorm ends up as one Conv credited to the BatchNorm) has no output of its own: that is
an error naming the nearby modules that do.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterable

import onnx

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


class LayerNameError(ValueError):
    """A layer name that matches neither a value of the graph nor a module with an output."""


def module_output_name(model: onnx.ModelProto, module_path: str, containers: Iterable[str] = ()) -> str:
    """The ONNX value name holding the output of torch module ``module_path``.

    ``containers``: module paths that are never called (plain ``nn.ModuleList`` /
    ``nn.ModuleDict``); only TorchScript node names need them, as such modules open no scope.
    """
    graph = model.graph
    scopes = [_node_scopes(n) for n in graph.node]
    skip = set(containers)
    members = [i for i, s in enumerate(scopes) if s is not None and _in_scope(s, module_path, skip)]
    if not members:
        raise LayerNameError(_no_scope_message(model, module_path, scopes))
    member_set = set(members)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in _node_inputs(node):
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    types = _elem_types(model)
    for i in reversed(members):
        for out in reversed(graph.node[i].output):
            if not out or types.get(out, onnx.TensorProto.FLOAT) not in _FLOAT_TYPES:
                continue
            if out in graph_outputs or any(c not in member_set for c in consumers.get(out, ())):
                return out
    raise LayerNameError(f"module {module_path!r} has nodes in the graph but none of their outputs is used "
                         "outside it (dead code?)")


def resolve_layer(model: onnx.ModelProto, layer: str, module_names: Iterable[str] | None = None,
                  containers: Iterable[str] = ()) -> str:
    """Turn ``layer`` (a torch module path or an ONNX value name) into an ONNX value name.

    ``module_names`` (the exported ``nn.Module``'s ``named_modules()`` keys, when known)
    decides ambiguous names in favour of the module: the dynamo exporter names values after
    FX nodes (``relu``, ``add_5``...), which can coincide with module names. Without it, a
    value of the graph wins, then a module scope recorded in the graph.
    """
    if module_names is not None and layer in set(module_names):
        return module_output_name(model, layer, containers)
    if layer in _value_names(model):
        return layer
    if layer in _all_module_paths(model):
        return module_output_name(model, layer, containers)
    known = sorted(set(module_names or ()) | set(_all_module_paths(model)))
    hint = difflib.get_close_matches(layer, known + sorted(_value_names(model)), n=5)
    raise LayerNameError(f"layer {layer!r} is neither a value of the ONNX graph nor a module of the model"
                         + (f"; did you mean: {', '.join(hint)}" if hint else ""))


def module_paths(model: onnx.ModelProto) -> list[str]:
    """Module paths that own at least one node, in graph order (root excluded)."""
    return _all_module_paths(model)


# -- scopes -------------------------------------------------------------------------------


def _node_scopes(node: onnx.NodeProto) -> tuple[str, object] | None:
    """("paths", [module paths]) from dynamo metadata, ("segments", [...]) from a
    TorchScript node name, or None when the node carries no scope."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                entries = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            # ['', 'layer4', 'layer4.1', ..., '<fx node name>']: drop the root and the node name
            return ("paths", [e for e in entries[1:-1] if isinstance(e, str)])
    if node.name.startswith("/"):
        return ("segments", node.name.split("/")[1:-1])
    return None


def _in_scope(scope: tuple[str, object], path: str, containers: set[str]) -> bool:
    kind, value = scope
    if path == "":
        return True
    if kind == "paths":
        return path in value  # type: ignore[operator]
    expected = _torchscript_segments(path, containers)
    segments = value  # type: ignore[assignment]
    if len(segments) < len(expected):
        return False
    return all(seg == exp or re.fullmatch(re.escape(exp) + r"_\d+", seg) for seg, exp in zip(segments, expected))


def _unqualified(path: str) -> str:
    """``layer4.0.downsample.0`` -> ``downsample.0`` (TorchScript's scope segment)."""
    atoms = path.split(".")
    i = len(atoms) - 1
    while i > 0 and atoms[i].isdigit():
        i -= 1
    return ".".join(atoms[i:])


def _torchscript_segments(path: str, containers: set[str]) -> list[str]:
    atoms = path.split(".")
    prefixes = [".".join(atoms[: k + 1]) for k in range(len(atoms))]
    return [_unqualified(p) for p in prefixes if p == path or p not in containers]


def _all_module_paths(model: onnx.ModelProto) -> list[str]:
    seen: dict[str, None] = {}
    for node in model.graph.node:
        scope = _node_scopes(node)
        if scope is None:
            continue
        kind, value = scope
        if kind == "paths":
            for p in value:  # type: ignore[union-attr]
                seen.setdefault(p, None)
    return list(seen)


def _no_scope_message(model: onnx.ModelProto, path: str, scopes: list) -> str:
    if all(s is None for s in scopes):
        return (f"cannot map module {path!r} to an ONNX value: the graph records no module scopes "
                "(export it with torch.onnx.export(..., dynamo=True), or pass an ONNX value name)")
    known = _all_module_paths(model)
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    near = [p for p in known if p.startswith(path + ".") or (parent and p.startswith(parent + "."))][:6]
    near = near or difflib.get_close_matches(path, known, n=5)
    return (f"module {path!r} has no node of its own in the exported graph (no such module, or its ops were "
            "fused into a neighbour, as a Conv into the BatchNorm after it)"
            + (f"; modules nearby: {', '.join(near)}" if near else ""))


# -- graph helpers --------------------------------------------------------------------------


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs of a node, including values its subgraphs (If/Loop bodies) read from outside."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for n in g.node:
                names.extend(_node_inputs(n))
    return names


def _value_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return {o for n in g.node for o in n.output if o} | {i.name for i in g.input}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    out: dict[str, int] = {}
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    return out
