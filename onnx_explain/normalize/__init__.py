"""Normalising ONNX files from other producers before the augmenter analyses them.

Real classifiers come from TorchScript and dynamo exports, paddle2onnx, tf2onnx and
simplifiers, at opsets from 7 up. Each difference that matters to the analysis is one
onnx-ir pass here, run in this order by :func:`normalize_model`:

1. :class:`UpgradeOpsetPass` - opsets below 13 are converted with ONNX's own version
   converter (its ``Softmax`` rewrite is recognised later, see ``graph_facts``);
2. ``LiftConstantsToInitializersPass`` (onnx-ir) - weights held in ``Constant`` nodes
   become initializers, as every rule and head detector expects;
3. :class:`FixImageSizePass` - a dynamic height/width is fixed from the size the user
   gives (or the preprocessing metadata), the batch stays dynamic;
4. :class:`GatherShapeDimsAsVectorsPass` then :class:`FoldShapeComputationsPass` - shape
   computations (``Shape -> Gather -> Concat -> Reshape``, computed pads, shape arithmetic
   written with floats) folded to constants by onnxscript's folder; the model's float
   computations are never touched, so its own outputs stay bit for bit;
5. :class:`FoldPadIntoConvPass` - a zero ``Pad`` feeding only a ``Conv`` (TorchScript's
   TF-style "same" padding) becomes the convolution's own pads: same numbers, bit for bit;
6. ONNX shape inference with data propagation;
7. :class:`InferBatchDependentShapesPass` - sizes computed from a dynamic batch (``x.reshape(B,
   2, C // 2, H, W)``, ``x.view(B, 1, -1)``) inferred on copies with the batch fixed.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass

from onnx_explain.errors import ModelError
from onnx_explain.normalize.fix_image_size import FixImageSizePass
from onnx_explain.normalize.fold_pad_into_conv import FoldPadIntoConvPass
from onnx_explain.normalize.fold_shape_computations import FoldShapeComputationsPass
from onnx_explain.normalize.gather_shape_dims_as_vectors import GatherShapeDimsAsVectorsPass
from onnx_explain.normalize.infer_batch_dependent_shapes import InferBatchDependentShapesPass
from onnx_explain.normalize.infer_shapes import InferShapesPass
from onnx_explain.normalize.upgrade_opset import MAX_OPSET, MIN_OPSET, UpgradeOpsetPass, opset_of

__all__ = [
    "normalize_model",
    "FixImageSizePass",
    "FoldShapeComputationsPass",
    "FoldPadIntoConvPass",
    "GatherShapeDimsAsVectorsPass",
    "InferBatchDependentShapesPass",
    "InferShapesPass",
    "UpgradeOpsetPass",
    "MIN_OPSET",
    "MAX_OPSET",
    "opset_of",
]


def normalize_model(model: onnx.ModelProto | ir.Model, size: tuple[int, int] | None = None, *,
                    image: bool = True) -> ir.Model:
    """The model as the analysis expects it: opset >= 13, weights as initializers, a static
    image height/width, integer shape computations folded, shapes inferred, nodes sorted.

    ``size`` (height, width) fixes a dynamic image size; a fixed size that differs from it is
    an error. Without it, a dynamic height/width is an error naming the input.
    """
    irm = model if isinstance(model, ir.Model) else ir.from_proto(model)
    passes = [
        UpgradeOpsetPass(),
        InferShapesPass(),  # types for the passes below
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        *([FixImageSizePass(size)] if image else []),
        GatherShapeDimsAsVectorsPass(),
        FoldShapeComputationsPass(),
        FoldPadIntoConvPass(),
        RemoveUnusedNodesPass(),
        InferShapesPass(),
        *([InferBatchDependentShapesPass()] if image else []),
    ]
    try:
        ir.passes.Sequential(*passes)(irm)
    except ir.passes.PassError as exc:  # our own errors surface as themselves
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ModelError):
            raise cause from None
        raise ModelError(f"could not prepare the model for analysis: {cause or exc}") from exc
    irm.graph.sort()
    return irm
