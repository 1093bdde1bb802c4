"""Outputs computed on demand: parts of an explain graph behind an ``If`` on a flag input.

ONNX Runtime (like every consumer that cannot prune a graph per request: onnxruntime-web,
-node, -mobile, Triton's ONNX Runtime backend) runs every node of the graph, whatever
outputs a call asks for.  A file that carries the input gradient would make every call,
a Grad-CAM-only one included, pay for it (3-13 x a prediction).  So the augmenter moves
the nodes that only the *gated* outputs (``grad_input``, ``guided_grad_input``) need into
the ``then`` branch of an ``If`` whose condition is a boolean graph input with a default
(an initializer of the same name, ``false``):

* a consumer that feeds only the image (and ``target``) runs the ``else`` branch, which
  returns an empty tensor (0 rows): the call costs what the ungated outputs cost;
* feeding ``compute_grad_input = true`` runs the ``then`` branch and returns the gradient.

The ``then`` branch *recomputes* the forward values it reads (a copy of the forward nodes
from the image up, the weights shared with the main graph) instead of reading the main
graph's: a value of the main graph read inside a branch must be kept in the plain NCHW
layout and alive until the ``If`` runs, and a convolution whose output the branch reads
can no longer be fused with its activation, so reading them made the Grad-CAM-only call
slower (``benchmarks/bench_consumers.py`` measures both forms).

:func:`inline_gates` undoes this for a consumer that prunes (the Python runtime): the
branch of a requested gated output is spliced back into the main graph, and each copied
forward node is merged with the main graph's identical node, which gives back the ungated
graph node for node.

Only ``onnx`` is imported here: the runtime calls :func:`inline_gates` while pruning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Metadata key (after ``onnx_explain.``): JSON ``{gated output: flag input}``.
GATES_KEY = "gates"
_GATE_PREFIX = "gate"


def flag_name(output: str) -> str:
    """The flag input that turns ``output`` on: ``compute_<output>``."""
    return f"compute_{output}"


def read_gates(model: onnx.ModelProto) -> dict[str, str]:
    """``{gated output: flag input}`` from the model's metadata (empty for an ungated file)."""
    for p in model.metadata_props:
        if p.key == "onnx_explain." + GATES_KEY:
            try:
                value = json.loads(p.value)
            except ValueError:
                return {}
            if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                return dict(value)
            return {}
    return {}


# --------------------------------------------------------------------------- building


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from outside themselves."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            local |= {o for n in g.node for o in n.output}
            for n in g.node:
                names |= {i for i in n.input if i and i not in local}
                names |= _subgraph_reads(n) - local
            names |= {o.name for o in g.output if o.name not in local}
    return names


def _node_reads(node: onnx.NodeProto) -> set[str]:
    return {i for i in node.input if i} | _subgraph_reads(node)


def _ancestors(graph: onnx.GraphProto, outputs: Iterable[str]) -> set[int]:
    """Indices of the nodes that ``outputs`` depend on."""
    producer = _producers(graph)
    seen: set[int] = set()
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(producer[n] for n in _node_reads(graph.node[i]) if n in producer)
    return seen


def gate_outputs(model: onnx.ModelProto, gated: Sequence[str], *, recompute: bool = True,
                 forward_outputs: Sequence[str] | None = None) -> onnx.ModelProto:
    """Put each of the graph outputs ``gated`` behind its own ``If`` on a flag input.

    ``forward_outputs`` (default: the graph's first output, the model's own) say which
    nodes are the model's forward: with ``recompute`` a branch copies the forward nodes
    it reads instead of reading the main graph's values.  A node two gated outputs need
    goes into both branches.  Returns a new model; the flags are listed in the metadata
    (:data:`GATES_KEY`).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    names = [o.name for o in graph.output]
    gated = [g for g in names if g in set(gated)]
    if not gated:
        return model
    main = _ancestors(graph, [n for n in names if n not in gated])
    forward = _ancestors(graph, forward_outputs or names[:1]) if recompute else set()
    producer = _producers(graph)
    ifs = [_make_gate(graph, out, sorted(_ancestors(graph, [out]) - main), forward, producer) for out in gated]
    nodes = [graph.node[i] for i in sorted(main)]
    del graph.node[:]
    graph.node.extend(nodes + ifs)
    present = {o for n in graph.node for o in n.output}
    kept_info = [v for v in graph.value_info if v.name in present]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    gates = read_gates(model)
    gates.update({out: flag_name(out) for out in gated})
    props = [(p.key, p.value) for p in model.metadata_props if p.key != "onnx_explain." + GATES_KEY]
    del model.metadata_props[:]
    for k, v in props + [("onnx_explain." + GATES_KEY, json.dumps(gates))]:
        model.metadata_props.add(key=k, value=v)
    return model


def _make_gate(graph: onnx.GraphProto, out: str, only: list[int], forward: set[int],
               producer: dict[str, int]) -> onnx.NodeProto:
    """The ``If`` node computing ``out`` from nodes ``only`` (and copies of the forward
    nodes they read) when ``compute_<out>`` is true; adds the flag input."""
    prefix = f"{_GATE_PREFIX}/{out}"
    rename: dict[str, str] = {}
    for i in set(only) | _forward_closure(graph, only, forward, producer):
        for o in graph.node[i].output:
            if o:
                rename[o] = f"{prefix}/{o}"
    copies = sorted(_forward_closure(graph, only, forward, producer))
    branch = [_renamed(graph.node[i], rename, f"{prefix}/copy") for i in copies]
    branch += [_renamed(graph.node[i], rename, prefix) for i in only]
    # The float weights reach the branch through a `Mul` by 1, which ONNX Runtime folds into
    # a constant of the branch: its NCHWc layout transformer only takes a convolution whose
    # weights are constants of its own graph (not of the enclosing one), and without it the
    # branch ran twice as slow.  The file keeps one copy of each weight.
    floats = {t.name: t.data_type for t in graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)}
    local_weights: dict[str, str] = {}
    for node in branch:
        for k, name in enumerate(node.input):
            if name in floats:
                local_weights.setdefault(name, f"{prefix}/weight/{name}")
                node.input[k] = local_weights[name]
    ones: dict[int, str] = {}
    for elem in sorted({floats[w] for w in local_weights}):
        ones[elem] = f"{prefix}/one/{elem}"
        graph.initializer.append(numpy_helper.from_array(np.ones((), helper.tensor_dtype_to_np_dtype(elem)), ones[elem]))
    branch = [helper.make_node("Mul", [w, ones[floats[w]]], [local], name=local) for w, local in local_weights.items()] + branch
    branch = _toposort(branch)

    info = next(v for v in graph.output if v.name == out)
    elem = info.type.tensor_type.elem_type
    then_g = helper.make_graph(branch, f"{prefix}/then", [], [helper.make_tensor_value_info(rename.get(out, out), elem, None)])
    if out not in rename:  # produced by the main graph (nothing to gate): pass it through
        then_g.node.append(helper.make_node("Identity", [out], [f"{prefix}/{out}"], name=f"{prefix}/identity"))
        then_g.output[0].name = f"{prefix}/{out}"
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]
    empty = np.zeros([0] + dims[1:], dtype=helper.tensor_dtype_to_np_dtype(elem))
    else_name = f"{prefix}/empty"
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], [else_name], name=else_name, value=numpy_helper.from_array(empty))],
        f"{prefix}/else", [], [helper.make_tensor_value_info(else_name, elem, None)])
    flag = flag_name(out)
    graph.input.append(helper.make_tensor_value_info(flag, onnx.TensorProto.BOOL, []))
    graph.initializer.append(numpy_helper.from_array(np.array(False), flag))
    # 0 rows when the flag is off: the output's first dimension is not the batch's
    shape = info.type.tensor_type.shape
    if len(shape.dim):
        shape.dim[0].Clear()
        shape.dim[0].dim_param = f"{out}_rows"
    return helper.make_node("If", [flag], [out], name=f"{prefix}/if", then_branch=then_g, else_branch=else_g)


def _forward_closure(graph: onnx.GraphProto, only: list[int], forward: set[int], producer: dict[str, int]) -> set[int]:
    """The forward nodes that nodes ``only`` read, directly or through other forward nodes."""
    stack = [producer[n] for i in only for n in _node_reads(graph.node[i]) if n in producer]
    found: set[int] = set()
    while stack:
        j = stack.pop()
        if j in found or j not in forward:
            continue
        found.add(j)
        stack.extend(producer[n] for n in _node_reads(graph.node[j]) if n in producer)
    return found


def _renamed(node: onnx.NodeProto, rename: dict[str, str], prefix: str) -> onnx.NodeProto:
    """A copy of ``node`` reading and writing the branch-local names."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    for k, o in enumerate(new.output):
        if o in rename:
            new.output[k] = rename[o]
    for k, i in enumerate(new.input):
        if i in rename:
            new.input[k] = rename[i]
    _rename_in_subgraphs(new, rename)
    new.name = f"{prefix}/{node.name or node.op_type}"
    return new


def _rename_in_subgraphs(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    for attr in node.attribute:
        for g in list(attr.graphs) + ([attr.g] if attr.HasField("g") else []):
            local = {i.name for i in g.input} | {o for n in g.node for o in n.output}
            for n in g.node:
                for k, i in enumerate(n.input):
                    if i in rename and i not in local:
                        n.input[k] = rename[i]
                _rename_in_subgraphs(n, {k: v for k, v in rename.items() if k not in local})


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            for name in _node_reads(nodes[j]):
                k = produced.get(name)
                if k is not None and k not in done:
                    stack.append((k, False))

    for i in range(len(nodes)):
        visit(i)
    return order


# --------------------------------------------------------------------------- inlining


def inline_gates(model: onnx.ModelProto, outputs: Iterable[str]) -> onnx.ModelProto:
    """The model with the gate of every requested gated output spliced back into the main
    graph (its forward copies merged with the identical main-graph nodes); gates not
    requested are left (pruning drops them).  ``model`` itself is returned when there is
    nothing to inline."""
    gates = read_gates(model)
    wanted = [o for o in outputs if o in gates]
    if not wanted:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for out in wanted:
        index = next((i for i, n in enumerate(graph.node) if n.op_type == "If" and list(n.output) == [out]), None)
        if index is None:
            continue
        if_node = graph.node[index]
        then_g = next(a.g for a in if_node.attribute if a.name == "then_branch")
        # identical nodes of the main graph: (op, domain, inputs, attributes) -> outputs
        known: dict[tuple, list[str]] = {}
        for n in graph.node:
            known.setdefault(_key(n, {}), list(n.output))
        mapping: dict[str, str] = {}
        new_nodes: list[onnx.NodeProto] = []
        prefix = f"{_GATE_PREFIX}/{out}"
        for n in then_g.node:
            if _is_local_weight(n, prefix) and n.output[0] != then_g.output[0].name:
                mapping[n.output[0]] = mapping.get(n.input[0], n.input[0])  # the weight itself
                continue
            key = _key(n, mapping)
            if key in known and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                        for a in n.attribute):
                for mine, theirs in zip(n.output, known[key]):
                    mapping[mine] = theirs
                continue
            new = onnx.NodeProto()
            new.CopyFrom(n)
            for k, i in enumerate(new.input):
                if i in mapping:
                    new.input[k] = mapping[i]
            _rename_in_subgraphs(new, mapping)
            known.setdefault(_key(new, {}), list(new.output))
            new_nodes.append(new)
        inner = then_g.output[0].name
        last = next((n for n in new_nodes if inner in n.output), None)
        if last is not None:
            last.output[list(last.output).index(inner)] = out
            for n in new_nodes:  # nothing else reads a graph output's inner name, but be safe
                for k, i in enumerate(n.input):
                    if i == inner:
                        n.input[k] = out
        else:  # the branch's output is a main-graph value: pass it through
            new_nodes.append(helper.make_node("Identity", [mapping.get(inner, inner)], [out], name=f"{_GATE_PREFIX}/{out}/identity"))
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes[:index] + new_nodes + nodes[index + 1:])
        _drop_flag(graph, gates[out])
        read = {i for n in graph.node for i in _node_reads(n)}
        keep = [t for t in graph.initializer if not t.name.startswith(f"{prefix}/one/") or t.name in read]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    remaining = {k: v for k, v in gates.items() if k not in wanted}
    props = [(p.key, p.value) for p in model.metadata_props if p.key != "onnx_explain." + GATES_KEY]
    del model.metadata_props[:]
    for k, v in props:
        model.metadata_props.add(key=k, value=v)
    if remaining:
        model.metadata_props.add(key="onnx_explain." + GATES_KEY, value=json.dumps(remaining))
    return model


def _is_local_weight(node: onnx.NodeProto, prefix: str) -> bool:
    """A branch's ``Mul(weight, 1)`` that makes a weight of the enclosing graph its own."""
    return node.op_type == "Mul" and len(node.input) == 2 and node.input[1].startswith(f"{prefix}/one/")


def _drop_flag(graph: onnx.GraphProto, flag: str) -> None:
    if any(flag in n.input or flag in _subgraph_reads(n) for n in graph.node):
        return
    for field in (graph.input, graph.initializer):
        keep = [v for v in field if v.name != flag]
        del field[:]
        field.extend(keep)


def _key(node: onnx.NodeProto, mapping: dict[str, str]) -> tuple:
    return (node.op_type, node.domain, tuple(mapping.get(i, i) for i in node.input), len(node.output),
            tuple(a.SerializeToString(deterministic=True) for a in sorted(node.attribute, key=lambda a: a.name)))
