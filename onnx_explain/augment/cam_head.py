"""Finding CAM's classifier weights: a global-average-pool + linear head after the layer."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

_ROUTING = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout"}


@dataclasses.dataclass
class CamHead:
    weight: str  # initializer name
    transposed: bool  # True when the initializer is classes x K (Gemm transB=1)
    bias: str | None


def find_cam_head(activation: ir.Value, logits: ir.Value) -> CamHead | None:
    """The linear layer's weights when ``logits = Linear(GAP(activation))``, else ``None``."""
    users = list(activation.uses())
    if len(users) != 1:
        return None
    pool = users[0].node
    if pool.op_type == "GlobalAveragePool":
        pass
    elif pool.op_type == "ReduceMean":
        axes = pool.attributes["axes"].value if "axes" in pool.attributes else None
        if axes is None and len(pool.inputs) > 1:
            axes = _constant_ints(pool.inputs[1])
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3]:
            return None
    else:
        return None
    value = pool.outputs[0]
    while True:
        uses = list(value.uses())
        if len(uses) != 1:
            return None
        node = uses[0].node
        if node.op_type in _ROUTING:
            value = node.outputs[0]
            continue
        break
    if node.op_type == "Gemm":
        w = node.inputs[1]
        if w.const_value is None or node.attributes.get("transA") and node.attributes["transA"].value:
            return None
        tb = bool(node.attributes["transB"].value) if "transB" in node.attributes else False
        bias = node.inputs[2].name if len(node.inputs) > 2 and node.inputs[2] is not None else None
        out = node.outputs[0]
    elif node.op_type == "MatMul":
        w = node.inputs[1]
        if w.const_value is None:
            return None
        tb, bias, out = False, None, node.outputs[0]
        uses = list(out.uses())
        if len(uses) == 1 and uses[0].node.op_type == "Add":
            add = uses[0].node
            other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
            if other is not None and other.const_value is not None:
                bias, out = other.name, add.outputs[0]
    else:
        return None
    return CamHead(w.name, tb, bias) if out is logits else None


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    """An initializer's or a Constant node's integer content."""
    if value is None:
        return None
    if value.const_value is not None:
        return [int(v) for v in value.const_value.numpy().reshape(-1)]
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return [int(v) for v in producer.attributes["value"].value.numpy().reshape(-1)]
    return None
