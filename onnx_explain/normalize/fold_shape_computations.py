"""Pass: fold the integer shape computations of a graph to constants.

TorchScript and paddle2onnx exports compute pads and Reshape targets at run time
(``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``ConstantOfShape -> Concat ->
Slice -> Cast -> Pad``). Once the image size is static most of them are constants, and
folding them gives every value downstream a static shape. The folding is onnxscript's;
this pass only restricts it to nodes that produce integer or boolean tensors, or combine a
handful of numbers with an exactly rounded float operator (shape arithmetic written with
floats), so no float arithmetic of the model is re-done in NumPy (its outputs stay bit for
bit), and
forces it where onnxscript would keep a node (``ConstantOfShape``) for size reasons.
"""

from __future__ import annotations

import onnx_ir as ir

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
_SIZE_LIMIT = 1 << 20  # elements: shape tensors are tiny, int weights (embeddings) are left alone


# Float operators whose result IEEE arithmetic rounds exactly, the same in NumPy as in any
# runtime: what shape arithmetic written with floats uses (timm's TF "same" padding traces
# ``ceil(size / stride)`` as Cast -> Div -> Ceil -> Mul -> Sub -> Max -> Cast).
_EXACT_FLOAT_OPS = frozenset({
    "Cast", "CastLike", "Identity", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Ceil", "Floor",
    "Round", "Max", "Min", "Clip", "Relu", "Sqrt", "Unsqueeze", "Squeeze", "Concat", "Reshape",
    "Gather", "Slice",
})
_SCALAR_LIMIT = 16  # elements: a shape's arithmetic, never a weight


def _shape_computation(node: ir.Node) -> bool | None:
    """onnxscript's ``should_fold`` (asked once every input is constant): False = never,
    True = fold. Integer and boolean results are folded; a float result only when an exact
    operator combines a handful of numbers (shape arithmetic in floats), so no float
    arithmetic on the model's weights or data is redone elsewhere than in the runtime."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return None
    if not node.outputs or any(o.dtype is None for o in node.outputs):
        return False
    if not any(o.dtype in _FLOATS for o in node.outputs):
        return True
    return (node.domain in ("", "ai.onnx") and node.op_type in _EXACT_FLOAT_OPS
            and all(v is None or (v.const_value is not None and v.const_value.size <= _SCALAR_LIMIT)
                    for v in node.inputs))


class FoldShapeComputationsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxscript.optimizer._constant_folding import FoldConstantsPass

        folder = FoldConstantsPass(shape_inference=True, input_size_limit=_SIZE_LIMIT,
                                   output_size_limit=_SIZE_LIMIT, should_fold=_shape_computation)
        result = folder(model)
        return ir.passes.PassResult(model, modified=result.modified)
