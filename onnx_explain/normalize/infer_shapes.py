"""Pass: ONNX shape inference (with data propagation), reporting failures as model errors.

onnx-ir's own ``ShapeInferencePass`` leaves the model unchanged on failure; the analysis
needs shapes, so a failure here names the cause instead. Large weights are left out of
what ONNX's checker sees (their shapes are all it needs).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from onnx_explain.errors import ModelError

_INLINE_LIMIT = 4096  # bytes: small constants stay (data propagation reads them), weights go


class InferShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto = without_large_weights(model)
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception as exc:
            raise ModelError(f"ONNX shape inference failed: {str(exc).strip()}") from exc
        graph = model.graph
        values = ir.convenience.create_value_mapping(graph)
        modified = False
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            value = values.get(info.name)
            if value is None or not info.type.HasField("tensor_type"):
                continue
            found = ir.serde.deserialize_value_info_proto(info, None)
            if found.shape is not None and found.shape != value.shape:
                value.shape, modified = found.shape, True
            if found.dtype is not None and value.dtype is None:
                value.dtype, modified = found.dtype, True
        return ir.passes.PassResult(model, modified=modified)


def without_large_weights(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto whose large initializers are declared inputs without data."""
    graph = model.graph
    large = [v for v in graph.initializers.values()
             if v.const_value is not None and v.const_value.nbytes > _INLINE_LIMIT]
    added = [v for v in large if v not in graph.inputs]
    for v in large:
        if v.shape is None:
            v.shape = v.const_value.shape
        if v.dtype is None:
            v.dtype = v.const_value.dtype
        graph.initializers.pop(v.name)
    graph.inputs.extend(added)
    try:
        return ir.to_proto(model)
    finally:
        for v in added:
            graph.inputs.remove(v)
        for v in large:
            graph.register_initializer(v)
