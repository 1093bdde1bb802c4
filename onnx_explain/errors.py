"""The errors onnx-explain raises on purpose: each one reads as a single clear line."""

from __future__ import annotations


class ExplainError(Exception):
    """Base class: a problem the user can act on (not a bug)."""


class ModelError(ExplainError):
    """The model file is missing, not ONNX, or not usable as asked."""


class UnsupportedOperatorError(ModelError):
    """An operator on the gradient path has no vector-Jacobian rule.

    Raised instead of silently giving it a zero gradient.
    """

    def __init__(self, op_type: str, node_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        msg = f"no gradient rule for operator {op_type!r} (node {node_name!r}) on the gradient path"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
