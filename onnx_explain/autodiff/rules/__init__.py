"""Vector-Jacobian rules, one module per family of ONNX operators.

Importing this package registers every rule in :data:`onnx_explain.autodiff.registry.RULES`.
"""

from onnx_explain.autodiff.rules import (  # noqa: F401
    activations,
    arithmetic,
    convolution,
    gather,
    linear,
    normalization,
    pooling,
    reductions,
    resize,
    routing,
)
