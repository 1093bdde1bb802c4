"""Pass: bring opsets 7 to 12 up to 13 with ONNX's own version converter.

Opset 13 changed the semantics the rules rely on (Softmax over one axis, ReduceSum axes
as an input, Split sizes as an input...). The converter keeps the model's meaning; its
rewrite of ``Softmax(axis=1)`` into ``Flatten -> Softmax -> Reshape`` is recognised by the
classifier analysis, so the logit stays the differentiated score.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveInitializersFromInputsPass

from onnx_explain.errors import ModelError

MIN_OPSET = 13  # what the analysis and the rules are written for
MAX_OPSET = 23  # newest opset the rules have been checked against
OLDEST_CONVERTIBLE = 7
_IR_OF_MIN_OPSET = 7


def opset_of(model: ir.Model | onnx.ModelProto) -> int:
    """The default-domain opset version of ``model`` (0 when it imports none)."""
    if isinstance(model, onnx.ModelProto):
        return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


class UpgradeOpsetPass(ir.passes.InPlacePass):
    """Convert opsets ``OLDEST_CONVERTIBLE..MIN_OPSET-1`` to ``MIN_OPSET``; refuse the rest."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = opset_of(model)
        if opset > MAX_OPSET:
            raise ModelError(f"opset {opset} is newer than {MAX_OPSET}, the newest this version handles")
        if opset >= MIN_OPSET:
            return ir.passes.PassResult(model, modified=False)
        if opset < OLDEST_CONVERTIBLE:
            raise ModelError(f"opset {opset} is older than {OLDEST_CONVERTIBLE}, the oldest that can be upgraded")
        model.graph = ir.from_proto(upgrade_opset(ir.to_proto(model))).graph  # the converter works on protos
        if (model.ir_version or 0) < 4:
            # IR 3 (opset 7-8 files) lists every initializer as an input too, and means them as
            # constants; from IR 4 such an input is an overridable initializer, which ONNX Runtime
            # may not fold or fuse. Opset 13 needs IR 7, which the converter does not raise.
            RemoveInitializersFromInputsPass()(model)
        model.ir_version = max(model.ir_version or 0, _IR_OF_MIN_OPSET)
        return ir.passes.PassResult(model, modified=True)


def upgrade_opset(proto: onnx.ModelProto, target: int = MIN_OPSET) -> onnx.ModelProto:
    """``proto`` converted to opset ``target`` by ONNX's converter, Upsample's sampling kept."""
    opset = opset_of(proto)
    upsampled = {n.output[0] for n in proto.graph.node if n.op_type == "Upsample" and n.domain in ("", "ai.onnx")}
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter reports unconvertible ops as RuntimeError/ValueError
        raise ModelError(f"cannot upgrade opset {opset} to {target}: {str(exc).strip().splitlines()[0]}") from exc
    _keep_upsample_coordinates(converted, upsampled)
    return converted

def _keep_upsample_coordinates(model: onnx.ModelProto, upsampled: set[str]) -> None:
    """Give the Resize nodes the converter made of Upsample nodes Upsample's own sampling.

    Upsample samples input ``floor(i / scale)`` (nearest) or ``i / scale`` (linear): asymmetric
    coordinates. The converter leaves Resize's defaults (``half_pixel``, nearest rounding),
    another function for linear modes and for non-integer scales.
    """
    for node in model.graph.node:
        if node.op_type != "Resize" or node.output[0] not in upsampled:
            continue
        kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
        if mode == "nearest":
            node.attribute.append(onnx.helper.make_attribute("nearest_mode", "floor"))
