"""Pass: fold the integer shape computations of a graph to constants.

TorchScript and paddle2onnx exports compute pads and Reshape targets at run time
(``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``ConstantOfShape -> Concat ->
Slice -> Cast -> Pad``). Once the image size is static most of them are constants, and
folding them gives every value downstream a static shape. The folding is onnxscript's;
this pass only restricts it to nodes that produce integer or boolean tensors, so no float
arithmetic of the model is ever re-done in NumPy (its outputs stay bit for bit), and
forces it where onnxscript would keep a node (``ConstantOfShape``) for size reasons.
"""

from __future__ import annotations

import onnx_ir as ir

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
_SIZE_LIMIT = 1 << 20  # elements: shape tensors are tiny, int weights (embeddings) are left alone


def _integer_only(node: ir.Node) -> bool | None:
    """onnxscript's ``should_fold``: False = never, True = whenever the inputs are constant."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return None
    if not node.outputs or any(o.dtype is None or o.dtype in _FLOATS for o in node.outputs):
        return False
    return True


class FoldShapeComputationsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxscript.optimizer._constant_folding import FoldConstantsPass

        folder = FoldConstantsPass(shape_inference=True, input_size_limit=_SIZE_LIMIT,
                                   output_size_limit=_SIZE_LIMIT, should_fold=_integer_only)
        result = folder(model)
        return ir.passes.PassResult(model, modified=result.modified)
