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

The branch *recomputes* the forward values it reads (a copy of the forward nodes from the
image up, the weights shared with the main graph) instead of reading the main graph's: a
value of the main graph read inside a branch must be kept in the plain NCHW layout and
alive until the ``If`` runs, and a convolution whose output the branch reads can no longer
be fused with its activation, so reading them made the Grad-CAM-only call slower
(``benchmarks/bench_consumers.py`` measures both forms).  With two gated outputs, one
``If`` on "either flag" holds the forward copy and, inside it, one ``If`` per output on
its own flag: the forward is copied (and held by ONNX Runtime) once.

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
_ONE = "gate/one/"  # the scalar 1 of each float type that the branches' weights are multiplied by


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
    """Put the graph outputs ``gated`` behind ``If`` nodes on their flag inputs.

    ``forward_outputs`` (default: the graph's first output, the model's own) say which
    nodes are the model's forward.  With ``recompute`` one ``If`` on "any flag" holds a
    copy of the forward nodes the gated outputs read, and inside it one ``If`` per output
    on its own flag holds that output's nodes: the forward is recomputed once, whichever
    outputs are asked for.  Without, each output gets an ``If`` of its own whose branch
    reads the main graph's forward values (the form measured and rejected).  Returns a new
    model; the flags are listed in the metadata (:data:`GATES_KEY`).
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
    only = {out: sorted(_ancestors(graph, [out]) - main) for out in gated}
    for out in gated:
        graph.input.append(helper.make_tensor_value_info(flag_name(out), onnx.TensorProto.BOOL, []))
        graph.initializer.append(numpy_helper.from_array(np.array(False), flag_name(out)))
    if recompute:
        added = _shared_gate(graph, gated, only, forward, producer)
    else:
        added = [_gate(graph, out, f"{_GATE_PREFIX}/{out}", only[out], {}, flag_name(out)) for out in gated]
    nodes = [graph.node[i] for i in sorted(main)]
    del graph.node[:]
    graph.node.extend(nodes + added)
    for info in graph.output:  # 0 rows when the flag is off: the first dimension is not the batch's
        if info.name in gated and len(info.type.tensor_type.shape.dim):
            info.type.tensor_type.shape.dim[0].Clear()
            info.type.tensor_type.shape.dim[0].dim_param = f"{info.name}_rows"
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


def _shared_gate(graph: onnx.GraphProto, gated: list[str], only: dict[str, list[int]], forward: set[int],
                 producer: dict[str, int]) -> list[onnx.NodeProto]:
    """``If(any flag)``: the forward copy, then one ``If(flag)`` per gated output."""
    prefix = f"{_GATE_PREFIX}/forward"
    copies = sorted(_forward_closure(graph, sorted(set().union(*only.values())), forward, producer))
    rename = {o: f"{prefix}/{o}" for i in copies for o in graph.node[i].output if o}
    body = [_renamed(graph.node[i], rename, prefix) for i in copies]
    if len(gated) == 1:  # one If: the forward copy and the output's nodes
        out = gated[0]
        return [_gate(graph, out, f"{_GATE_PREFIX}/{out}", only[out], rename, flag_name(out), extra=body)]
    for out in gated:
        inner = f"{_GATE_PREFIX}/{out}"
        body.append(_gate(graph, out, inner, only[out], rename, flag_name(out), output=f"{inner}/result"))
    body = _localize_weights(graph, body, prefix) + body
    nodes = []
    condition = flag_name(gated[0])
    for k, out in enumerate(gated[1:]):
        nodes.append(helper.make_node("Or", [condition, flag_name(out)], [f"{_GATE_PREFIX}/any_{k}"],
                                      name=f"{_GATE_PREFIX}/any_{k}"))
        condition = nodes[-1].output[0]
    return nodes + [_if(graph, condition, prefix, body, gated, [f"{_GATE_PREFIX}/{o}/result" for o in gated])]


def _gate(graph: onnx.GraphProto, out: str, prefix: str, only: list[int], outer: dict[str, str], flag: str,
          output: str | None = None, extra: Sequence[onnx.NodeProto] = ()) -> onnx.NodeProto:
    """``If(flag)`` computing graph output ``out`` with nodes ``only`` (reading the values
    ``outer`` renames under their new names; ``extra`` nodes, already renamed, go into the
    same branch), as value ``output`` (default ``out``)."""
    rename = dict(outer)
    rename.update({o: f"{prefix}/{o}" for i in only for o in graph.node[i].output if o})
    body = list(extra) + [_renamed(graph.node[i], rename, prefix) for i in only]
    body = _localize_weights(graph, body, prefix) + body
    if out not in rename:  # produced by the main graph (nothing to gate): pass it through
        body.append(helper.make_node("Identity", [out], [f"{prefix}/{out}"], name=f"{prefix}/identity"))
        rename[out] = f"{prefix}/{out}"
    node = _if(graph, flag, prefix, body, [out], [rename[out]])
    if output is not None:
        node.output[0] = output
    return node


def _if(graph: onnx.GraphProto, condition: str, prefix: str, body: list[onnx.NodeProto], outs: list[str],
        inner: list[str]) -> onnx.NodeProto:
    """``If(condition)``: ``body`` giving ``inner``, else an empty tensor (0 rows) for each of
    the graph outputs ``outs``."""
    infos = {v.name: v for v in graph.output}
    elems = [infos[o].type.tensor_type.elem_type for o in outs]
    then_g = helper.make_graph(_toposort(body), f"{prefix}/then", [],
                               [helper.make_tensor_value_info(n, e, None) for n, e in zip(inner, elems)])
    empties = []
    for o, e in zip(outs, elems):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in infos[o].type.tensor_type.shape.dim]
        value = numpy_helper.from_array(np.zeros([0] + dims[1:], dtype=helper.tensor_dtype_to_np_dtype(e)))
        empties.append(helper.make_node("Constant", [], [f"{prefix}/empty/{o}"], name=f"{prefix}/empty/{o}", value=value))
    else_g = helper.make_graph(empties, f"{prefix}/else", [],
                               [helper.make_tensor_value_info(n.output[0], e, None) for n, e in zip(empties, elems)])
    return helper.make_node("If", [condition], list(outs), name=f"{prefix}/if", then_branch=then_g, else_branch=else_g)


def _localize_weights(graph: onnx.GraphProto, body: list[onnx.NodeProto], prefix: str) -> list[onnx.NodeProto]:
    """Make the float weights that nodes ``body`` read constants of their own graph: a
    ``Mul`` by 1 that ONNX Runtime folds.  Its NCHWc layout transformer only takes a
    convolution whose weights are constants of the convolution's own graph (not of an
    enclosing one); without it a branch ran twice as slow.  The file keeps one copy of each
    weight.  Returns the ``Mul`` nodes; ``body`` is rewired to read their outputs."""
    floats = {t.name: t.data_type for t in graph.initializer
              if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)}
    local: dict[str, str] = {}
    for node in body:
        for k, name in enumerate(node.input):
            if name in floats:
                local.setdefault(name, f"{prefix}/weight/{name}")
                node.input[k] = local[name]
    have = {t.name for t in graph.initializer}
    muls = []
    for name, value in local.items():
        one = f"{_ONE}{floats[name]}"
        if one not in have:
            graph.initializer.append(numpy_helper.from_array(np.ones((), helper.tensor_dtype_to_np_dtype(floats[name])), one))
            have.add(one)
        muls.append(helper.make_node("Mul", [name, one], [value], name=value))
    return muls


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
    """The model with the branches of every requested gated output spliced back into the
    main graph (forward copies merged with the identical main-graph nodes, which gives back
    the ungated graph); the gates of outputs not requested are left (pruning drops them).
    ``model`` itself is returned when there is nothing to inline."""
    gates = read_gates(model)
    wanted = {o for o in outputs if o in gates}
    if not wanted:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    while True:  # outermost first: a spliced branch brings the inner If nodes into the graph
        index = next((i for i, n in enumerate(graph.node) if n.op_type == "If" and set(n.output) & wanted), None)
        if index is None:
            break
        _splice(graph, index)
    while True:  # the "any flag" nodes no If reads any more
        read = {i for n in graph.node for i in _node_reads(n)} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.name.startswith(f"{_GATE_PREFIX}/any_") and n.output[0] not in read]
        if not dead:
            break
        keep_nodes = [n for n in graph.node if n not in dead]
        del graph.node[:]
        graph.node.extend(keep_nodes)
    for out in wanted:
        _drop_flag(graph, gates[out])
    read = {i for n in graph.node for i in _node_reads(n)}
    keep = [t for t in graph.initializer if not t.name.startswith(_ONE) or t.name in read]
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


def _splice(graph: onnx.GraphProto, index: int) -> None:
    """Replace the ``If`` node at ``index`` by its ``then`` branch, each branch node merged
    with an identical node of the graph where there is one."""
    if_node = graph.node[index]
    then_g = next(a.g for a in if_node.attribute if a.name == "then_branch")
    known: dict[tuple, list[str]] = {}  # (op, domain, inputs, attributes) -> outputs
    for n in graph.node:
        known.setdefault(_key(n, {}), list(n.output))
    results = {o.name for o in then_g.output}
    mapping: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for n in then_g.node:
        if _is_local_weight(n) and n.output[0] not in results:
            mapping[n.output[0]] = mapping.get(n.input[0], n.input[0])  # the weight itself
            continue
        key = _key(n, mapping)
        if key in known and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
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
    for inner, out in zip((o.name for o in then_g.output), if_node.output):
        last = next((n for n in new_nodes if inner in n.output), None)
        if last is not None:
            last.output[list(last.output).index(inner)] = out
            for n in new_nodes:
                for k, i in enumerate(n.input):
                    if i == inner:
                        n.input[k] = out
                _rename_in_subgraphs(n, {inner: out})
        else:  # the branch's result is a value of the graph: pass it through
            new_nodes.append(helper.make_node("Identity", [mapping.get(inner, inner)], [out], name=f"{out}/identity"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[:index] + new_nodes + nodes[index + 1:])


def _is_local_weight(node: onnx.NodeProto) -> bool:
    """A branch's ``Mul(weight, 1)`` that makes a weight of the enclosing graph its own."""
    return node.op_type == "Mul" and len(node.input) == 2 and node.input[1].startswith(_ONE)


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
