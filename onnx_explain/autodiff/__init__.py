"""Reverse-mode differentiation of ONNX graphs, emitted as ONNX.

``build_vjp`` walks the forward graph backwards from a seed gradient and appends, op by
op, the vector-Jacobian product of each operator on the path (one rule per operator,
registered in :mod:`onnx_explain.autodiff.rules`).  The result is more ONNX nodes in the
same graph, sharing the forward weights.
"""

from onnx_explain.autodiff.reverse import build_vjp, supported_ops
from onnx_explain.autodiff.vjp_model import add_vjp

__all__ = ["build_vjp", "supported_ops", "add_vjp"]
