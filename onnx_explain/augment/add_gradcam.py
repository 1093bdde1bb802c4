"""Pass: finished CAM maps in-graph, so a consumer without Python gets a heatmap.

Each map is the Python runtime's heatmap of the same method (``onnx_explain.methods`` and
the :class:`~onnx_explain.explainer.Explainer`'s finishing steps), computed from the
activations ``A`` and their gradients ``g`` (``N x K x h x w``):

* ``gradcam``: ``relu(sum_k mean_hw(g_k) A_k)``;
* ``gradcam_plusplus``: ``relu(sum_k w_k A_k)``, ``w_k = sum_hw alpha * relu(g)``,
  ``alpha = g^2 / (2 g^2 + sum_hw(A_k) g^3)`` (0 where ``g`` or the denominator is 0),
  the weights in double precision as the Python method computes them;
* ``layercam``: ``relu(sum_k relu(g_k) A_k)``, the product summed in double precision;

then min-max normalised per image to [0, 1] at the feature map's resolution (a constant
map gives 0) and resized bilinearly (half-pixel centres, edges repeated: the Python
runtime's ``Geometry.to_original`` for an image at the input size) to ``N x H x W``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_explain import contract
from onnx_explain.augment.plan import ExplainPlan
from onnx_explain.autodiff.emitter import Emitter


class AddMapsPass(ir.passes.InPlacePass):
    """Adds the maps named in ``maps`` (:data:`contract.IN_GRAPH_MAPS`)."""

    def __init__(self, plan: ExplainPlan, maps: tuple[str, ...] = (contract.GRADCAM,)) -> None:
        super().__init__()
        self.plan = plan
        unknown = [m for m in maps if m not in contract.IN_GRAPH_MAPS]
        if unknown:
            raise ValueError(f"unknown in-graph map(s) {unknown}; choose from {list(contract.IN_GRAPH_MAPS)}")
        self.maps = tuple(maps)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan, graph = self.plan, model.graph
        for name in self.maps:
            em = plan.emitter(graph, name)
            raw = _RAW[name](plan, em)
            plan.add_output(graph, name, _finish(plan, em, raw), plan.activations.dtype,
                            [plan.classifier.image.shape[0], *plan.classifier.spatial_size])
        return ir.passes.PassResult(model, modified=True)


class AddGradCamPass(AddMapsPass):
    """The Grad-CAM map alone (the pass the augmenter has always had)."""

    def __init__(self, plan: ExplainPlan) -> None:
        super().__init__(plan, (contract.GRADCAM,))


def _np_float(value: ir.Value):
    return np.float64 if value.dtype == ir.DataType.DOUBLE else np.float32


def _gradcam(plan: ExplainPlan, em: Emitter) -> ir.Value:
    a, da = plan.activations, plan.grad_activations
    weights = em.op("Mul", em.op("ReduceSum", da, em.ints([2, 3]), keepdims=1),
                    em.scalar(1.0 / (plan.layer.height * plan.layer.width), a))
    return em.op("Relu", em.op("ReduceSum", em.op("Mul", weights, a), em.ints([1]), keepdims=1))


def _double(em: Emitter, x: ir.Value) -> ir.Value:
    return x if x.dtype == ir.DataType.DOUBLE else em.op("Cast", x, to=ir.DataType.DOUBLE)


def _gradcam_plusplus(plan: ExplainPlan, em: Emitter) -> ir.Value:
    a_f = plan.activations
    a, g = _double(em, a_f), _double(em, plan.grad_activations)
    zero, one, two = (em.const(np.asarray(v, np.float64)) for v in (0.0, 1.0, 2.0))
    g2 = em.op("Mul", g, g)
    g3 = em.op("Mul", g2, g)
    sum_a = em.op("ReduceSum", a, em.ints([2, 3]), keepdims=1)
    den = em.op("Add", em.op("Mul", two, g2), em.op("Mul", sum_a, g3))
    ok = em.op("And", em.op("Not", em.op("Equal", g, zero)), em.op("Not", em.op("Equal", den, zero)))
    alpha = em.op("Where", ok, em.op("Div", g2, em.op("Where", ok, den, one)), zero)
    weights = em.op("ReduceSum", em.op("Mul", alpha, em.op("Relu", g)), em.ints([2, 3]), keepdims=1)
    if a_f.dtype != ir.DataType.DOUBLE:
        weights = em.op("Cast", weights, to=a_f.dtype)
    return em.op("Relu", em.op("ReduceSum", em.op("Mul", weights, a_f), em.ints([1]), keepdims=1))


def _layercam(plan: ExplainPlan, em: Emitter) -> ir.Value:
    a_f = plan.activations
    product = em.op("Mul", _double(em, em.op("Relu", plan.grad_activations)), _double(em, a_f))
    cam = em.op("ReduceSum", product, em.ints([1]), keepdims=1)
    if a_f.dtype != ir.DataType.DOUBLE:
        cam = em.op("Cast", cam, to=a_f.dtype)
    return em.op("Relu", cam)


_RAW = {contract.GRADCAM: _gradcam, contract.GRADCAM_PLUSPLUS: _gradcam_plusplus, contract.LAYERCAM: _layercam}


def _finish(plan: ExplainPlan, em: Emitter, cam: ir.Value) -> ir.Value:
    """``N x 1 x h x w`` raw map -> ``N x H x W`` in [0, 1]: per-image min-max at the map's
    resolution (``methods.normalize01``: a constant map gives 0), then bilinear resizing."""
    h, w = plan.classifier.spatial_size
    dtype = _np_float(plan.activations)
    flat = em.op("Flatten", cam, axis=1)
    lo = plan.reduce(em, "ReduceMin", flat, [1])
    span = em.op("Sub", plan.reduce(em, "ReduceMax", flat, [1]), lo)
    positive = em.op("Greater", span, em.const(np.asarray(0.0, dtype)))
    safe = em.op("Where", positive, span, em.const(np.asarray(1.0, dtype)))
    norm = em.op("Where", positive, em.op("Div", em.op("Sub", flat, lo), safe), em.const(np.asarray(0.0, dtype)))
    norm = em.op("Reshape", norm, em.op("Shape", cam))
    sizes = em.op("Concat", em.op("Slice", em.op("Shape", cam), em.ints([0]), em.ints([2])), em.ints([h, w]), axis=0)
    up = em.op("Resize", norm, None, None, sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return em.op("Reshape", up, em.ints([0, h, w]))
