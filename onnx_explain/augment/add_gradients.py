"""Pass: expose the target-layer activations and append the reverse-mode gradient subgraph."""

from __future__ import annotations

import onnx_ir as ir

from onnx_explain import contract
from onnx_explain.augment.plan import ExplainPlan
from onnx_explain.autodiff import build_vjp


class AddGradientsPass(ir.passes.InPlacePass):
    def __init__(self, plan: ExplainPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan, graph = self.plan, model.graph
        clf, layer = plan.classifier, plan.layer
        seeds = {clf.logits: plan.seed}
        wrt = [layer.value] + ([clf.image] if plan.input_gradients else [])
        grads = build_vjp(graph, seeds, wrt, emitter=plan.emitter(graph, "grad"))

        em = plan.emitter(graph, "explain")
        a, da = layer.value, grads[layer.value]
        if layer.layout == "NHWC":  # the contract's activations are channel-first
            a, da = em.op("Transpose", a, perm=[0, 3, 1, 2]), em.op("Transpose", da, perm=[0, 3, 1, 2])
            a.dtype = da.dtype = layer.value.dtype  # what the in-graph maps read
        dims = [clf.image.shape[0], layer.channels, layer.height, layer.width]
        plan.activations, plan.grad_activations = a, da
        plan.add_output(graph, contract.ACTIVATIONS, a, layer.value.dtype, dims)
        plan.add_output(graph, contract.GRAD_ACTIVATIONS, da, layer.value.dtype, dims)
        if plan.input_gradients:
            plan.add_output(graph, contract.GRAD_INPUT, grads[clf.image], clf.image.dtype, list(clf.image.shape))
        if plan.guided:
            guided = build_vjp(graph, seeds, [clf.image], mode="guided", emitter=plan.emitter(graph, "guided"))
            plan.add_output(graph, contract.GUIDED_GRAD_INPUT, guided[clf.image], clf.image.dtype, list(clf.image.shape))
        return ir.passes.PassResult(model, modified=True)
