"""Vector-Jacobian rules, one module per family of ONNX operators.

Importing this package registers every rule in :data:`onnx_explain.autodiff.registry.RULES`.
"""

from onnx_explain.autodiff.rules import (  # noqa: F401
    activations,
    arithmetic,
    convolution,
    extremes,
    gather,
    instance_norm,
    linear,
    lrn,
    normalization,
    pooling,
    reductions,
    resize,
    routing,
    smooth_activations,
    space_depth,
    tile,
    variadic,
)
