"""Pass: the prediction in a consumer's terms: ``probabilities`` and the ``top_k`` classes.

``probabilities`` (N x classes) is the Softmax of the logits (the model's own output when
the model ends in Softmax); ``top_k_values`` / ``top_k_indices`` (N x k) are the k largest
probabilities, largest first, and their classes.
"""

from __future__ import annotations

import onnx_ir as ir

from onnx_explain import contract
from onnx_explain.augment.plan import ExplainPlan
from onnx_explain.errors import ModelError


class AddPredictionPass(ir.passes.InPlacePass):
    def __init__(self, plan: ExplainPlan, probabilities: bool, top_k: int | None) -> None:
        super().__init__()
        self.plan = plan
        self.probabilities = probabilities
        self.top_k = top_k

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan, graph = self.plan, model.graph
        clf = plan.classifier
        em = plan.emitter(graph, "prediction")
        batch = clf.image.shape[0]
        if clf.ends_in_softmax:
            probs = clf.output
        else:
            if clf.output.name == contract.PROBABILITIES:
                raise ModelError(f"the model's own output is called {contract.PROBABILITIES!r} but holds logits: "
                                 "cannot add the probabilities output next to it")
            probs = em.op("Softmax", clf.logits, axis=1)
        if self.probabilities:
            if probs is clf.output and clf.output.name == contract.PROBABILITIES:
                plan.outputs[contract.PROBABILITIES] = contract.PROBABILITIES  # the model's own, already out
            else:
                plan.add_output(graph, contract.PROBABILITIES, probs, clf.logits.dtype, [batch, clf.num_classes])
        if self.top_k is not None:
            k = min(int(self.top_k), clf.num_classes)
            if k < 1:
                raise ValueError(f"top_k must be at least 1, got {self.top_k}")
            values, indices = em.op_multi("TopK", [probs, em.ints([k])], 2, axis=1, largest=1, sorted=1)
            plan.add_output(graph, contract.TOP_K_VALUES, values, clf.logits.dtype, [batch, k])
            plan.add_output(graph, contract.TOP_K_INDICES, indices, ir.DataType.INT64, [batch, k])
        return ir.passes.PassResult(model, modified=True)
