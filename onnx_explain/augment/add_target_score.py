"""Pass: add the ``target`` input and the ``target_class`` / ``score`` outputs.

The score is the pre-softmax logit of the class to explain; its gradient with respect to
the logits is the one-hot row that seeds the reverse pass.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_explain import contract
from onnx_explain.augment.plan import ExplainPlan
from onnx_explain.autodiff.emitter import numpy_dtype


class AddTargetAndScorePass(ir.passes.InPlacePass):
    def __init__(self, plan: ExplainPlan) -> None:
        super().__init__()
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan, graph = self.plan, model.graph
        em = plan.emitter(graph, "explain")
        logits = plan.classifier.logits
        batch = plan.classifier.image.shape[0]
        target = ir.Value(name=contract.TARGET, shape=ir.Shape([batch]), type=ir.TensorType(ir.DataType.INT64))
        graph.inputs.append(target)

        top1 = em.op("ArgMax", logits, axis=1, keepdims=0)
        chosen = em.op("Where", em.op("Less", target, em.ints([0])), top1, target)
        dtype = numpy_dtype(logits.dtype)
        onehot = em.op("OneHot", chosen, em.ints([plan.classifier.num_classes]), em.const(np.array([0, 1], dtype=dtype)), axis=-1)
        score = em.op("ReduceSum", em.op("Mul", logits, onehot), em.ints([1]), keepdims=0)
        plan.seed = onehot
        plan.add_output(graph, contract.TARGET_CLASS, chosen, ir.DataType.INT64, [batch])
        plan.add_output(graph, contract.SCORE, score, logits.dtype, [batch])
        return ir.passes.PassResult(model, modified=True)
