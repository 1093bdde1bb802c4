"""Pass: preprocessing in the graph, so a consumer feeds the decoded photo as it is.

The model's float image input is replaced by ``pixels``: uint8, N x H x W x 3, RGB, at the
model's input size (resizing stays with the consumer: it owns the decoder).  The graph
applies what the metadata's preprocessing says, with the Python runtime's arithmetic
(``onnx_explain.preprocess``, float32): colour order (RGB, BGR, or BT.601 grey),
``pixel * scale``, ``- mean``, ``/ std`` per channel, and the model's layout.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_explain import contract
from onnx_explain.augment.plan import ExplainPlan


class AddPixelsInputPass(ir.passes.InPlacePass):
    def __init__(self, plan: ExplainPlan, preprocess: contract.Preprocess) -> None:
        super().__init__()
        self.plan = plan
        self.preprocess = preprocess

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        plan, graph, pre = self.plan, model.graph, self.preprocess
        image = plan.classifier.image
        if image.dtype != ir.DataType.FLOAT:
            raise ValueError(f"--pixels needs a float32 image input; {image.name!r} is {image.dtype}")
        h, w = plan.classifier.spatial_size
        batch = image.shape[0]
        pixels = ir.Value(name=contract.PIXELS, shape=ir.Shape([batch, h, w, 3]),
                          type=ir.TensorType(ir.DataType.UINT8))
        em = plan.emitter(graph, "pixels")
        x = em.op("Cast", pixels, to=ir.DataType.FLOAT)
        if pre.color == "BGR":
            x = em.op("Gather", x, em.ints([2, 1, 0]), axis=3)
        elif pre.color == "GRAY":
            x = em.op("MatMul", x, em.const(np.asarray([[0.299], [0.587], [0.114]], np.float32)))
        x = em.op("Mul", x, em.const(np.asarray(pre.scale, np.float32)))
        x = em.op("Sub", x, em.const(np.asarray(pre.mean, np.float32)))
        x = em.op("Div", x, em.const(np.asarray(pre.std, np.float32)))
        if pre.layout == "NCHW":
            x = em.op("Transpose", x, perm=[0, 3, 1, 2])
        image.replace_all_uses_with(x)
        index = next(i for i, v in enumerate(graph.inputs) if v is image)
        graph.inputs[index] = pixels
        x.name = image.name + "/preprocessed" if image.name != contract.PIXELS else "input/preprocessed"
        x.type, x.shape = image.type, image.shape
        return ir.passes.PassResult(model, modified=True)
