"""The table of vector-Jacobian rules, one per ONNX operator type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import onnx_ir as ir

    from onnx_explain.autodiff.context import RuleContext

Rule = Callable[["RuleContext"], "Sequence[ir.Value | None]"]

RULES: dict[str, Rule] = {}


def register(*op_types: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the VJP rule of ``op_types`` (default ONNX domain)."""

    def wrap(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
        return fn

    return wrap
