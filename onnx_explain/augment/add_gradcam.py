"""Pass: the finished Grad-CAM map in-graph, so a consumer without Python gets a heatmap.

``relu(sum_k mean_hw(dY/dA_k) * A_k)``, bilinearly resized to the input size, min-max
normalised per image to [0, 1].
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_explain import contract
from onnx_explain.augment.plan import ExplainPlan


class AddGradCamPass(ir.passes.InPlacePass):
    def __init__(self, plan: ExplainPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan, graph = self.plan, model.graph
        em = plan.emitter(graph, "gradcam")
        a, da = plan.activations, plan.grad_activations
        h, w = plan.classifier.spatial_size
        like = a
        weights = em.op("Mul", em.op("ReduceSum", da, em.ints([2, 3]), keepdims=1),
                        em.scalar(1.0 / (plan.layer.height * plan.layer.width), like))
        cam = em.op("Relu", em.op("ReduceSum", em.op("Mul", weights, a), em.ints([1]), keepdims=1))
        sizes = em.op("Concat", em.op("Slice", em.op("Shape", cam), em.ints([0]), em.ints([2])), em.ints([h, w]), axis=0)
        up = em.op("Resize", cam, None, None, sizes, mode="linear", coordinate_transformation_mode="half_pixel")
        flat = em.op("Flatten", up, axis=1)
        lo = plan.reduce(em, "ReduceMin", flat, [1])
        hi = plan.reduce(em, "ReduceMax", flat, [1])
        span = em.op("Max", em.op("Sub", hi, lo), em.const(np.asarray(1e-12, dtype=np.float32 if a.dtype == ir.DataType.FLOAT else np.float64)))
        norm = em.op("Div", em.op("Sub", flat, lo), span)
        out = em.op("Reshape", norm, em.ints([0, h, w]))
        plan.add_output(graph, contract.GRADCAM, out, a.dtype, [plan.classifier.image.shape[0], h, w])
        return ir.passes.PassResult(model, modified=True)
