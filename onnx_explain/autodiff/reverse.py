"""The reverse-mode pass: from seed gradients back to the requested values."""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx_ir as ir

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.emitter import Emitter
from onnx_explain.autodiff.registry import RULES
from onnx_explain.errors import ModelError, UnsupportedOperatorError

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


def supported_ops() -> list[str]:
    """Operator types that have a vector-Jacobian rule."""
    import onnx_explain.autodiff.rules  # noqa: F401  (registers the rules)

    return sorted(RULES)


def _differentiable(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype in _FLOATS


def opset_of(graph: ir.Graph) -> int:
    return graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 0))


def build_vjp(
    graph: ir.Graph,
    seeds: Mapping[ir.Value, ir.Value],
    wrt: Sequence[ir.Value],
    *,
    mode: str = "plain",
    emitter: Emitter | None = None,
) -> dict[ir.Value, ir.Value]:
    """Append the gradient of ``sum(seed_grad * value)`` with respect to each of ``wrt``.

    Only nodes on a path from a ``wrt`` value to a seeded value get a backward node.
    The graph must be topologically sorted.  Raises :class:`UnsupportedOperatorError`
    for an operator on that path without a rule.
    """
    import onnx_explain.autodiff.rules  # noqa: F401  (registers the rules)

    em = emitter or Emitter(graph, prefix="grad" if mode == "plain" else f"grad_{mode}")
    first = next(iter(seeds))
    if first.dtype is not None:
        em.float_dtype = first.dtype
    opset = opset_of(graph)
    nodes = list(graph)

    active: set[ir.Value] = set(wrt)
    for node in nodes:
        if any(v is not None and v in active for v in node.inputs):
            active.update(o for o in node.outputs if _differentiable(o))
    needed: set[ir.Value] = set(seeds)
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            needed.update(v for v in node.inputs if v is not None)
    on_path = active & needed

    grads: dict[ir.Value, list[ir.Value]] = {v: [g] for v, g in seeds.items()}

    def total(value: ir.Value) -> ir.Value | None:
        parts = grads.get(value)
        if not parts:
            return None
        if len(parts) > 1:
            summed = em.op("Sum", *parts, name_hint="accumulate")
            grads[value] = [summed]
        return grads[value][0]

    for node in reversed(nodes):
        if not any(o in on_path and o in grads for o in node.outputs):
            continue
        need = [v is not None and v in on_path for v in node.inputs]
        if not any(need):
            continue
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOperatorError(f"{node.domain}::{node.op_type}", node.name or "")
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOperatorError(node.op_type, node.name or "")
        ctx = RuleContext(node, [total(o) for o in node.outputs], need, em, mode, opset)
        results = list(rule(ctx))
        for i, value in enumerate(node.inputs):
            if not need[i]:
                continue
            g = results[i] if i < len(results) else None
            if g is None:
                raise UnsupportedOperatorError(node.op_type, node.name or "", f"no gradient for input {i}")
            grads.setdefault(value, []).append(g)

    out: dict[ir.Value, ir.Value] = {}
    for w in wrt:
        g = total(w)
        if g is None:
            raise ModelError(f"{w.name!r} does not influence the differentiated output")
        out[w] = g
    return out
