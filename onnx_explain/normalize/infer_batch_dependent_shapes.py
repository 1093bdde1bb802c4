"""Pass: the shapes ONNX shape inference leaves unknown because they are computed from the
batch size.

A TorchScript export with a dynamic batch computes ``x.reshape(B, 2, C // 2, H, W)``,
``x.view(B, 1, -1)`` or ``cls_token.expand(B, -1, -1)`` from ``Shape(x)`` at run time. The
batch is symbolic, so those targets never fold to constants, and ONNX's data propagation
stops at the first ``Div`` or ``-1``: every value downstream loses its channel or spatial
sizes, which the gradient rules need. The batch itself can stay symbolic in the file; only
the analysis needs the other sizes. So this pass infers shapes twice more on copies with
the batch fixed at 2 and at 3 (shape computations folded there), and gives each value
whose shape is unknown what the two agree on: a size equal in both is static, one that is
2 and 3 is the batch, anything else stays unknown. The graph itself is not changed.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from onnx_explain.normalize.fold_shape_computations import _FLOATS, FoldShapeComputationsPass
from onnx_explain.normalize.infer_shapes import without_large_weights

_PROBES = (2, 3)  # two batch sizes: a size that follows the batch differs between them


def _incomplete(value: ir.Value) -> bool:
    if value.dtype not in _FLOATS:
        return False
    return value.shape is None or any(not isinstance(d, int) for d in list(value.shape)[1:])


class InferBatchDependentShapesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_explain.augment.graph_facts import find_image_input

        graph = model.graph
        image = find_image_input(graph)
        if image.shape is None or isinstance(image.shape[0], int):
            return ir.passes.PassResult(model, modified=False)  # a fixed batch: nothing to learn
        wanted = {v.name: v for node in graph for v in node.outputs if v.name and _incomplete(v)}
        if not wanted:
            return ir.passes.PassResult(model, modified=False)
        light = without_large_weights(model)  # what each probe copies
        probes = [_probe(light, image.name, batch) for batch in _PROBES]
        if any(p is None for p in probes):
            return ir.passes.PassResult(model, modified=False)
        batch_dim = image.shape[0]
        modified = False
        for name, value in wanted.items():
            dims = [p.get(name) for p in probes]
            if any(d is None for d in dims) or len(dims[0]) != len(dims[1]):
                continue
            merged = []
            for a, b in zip(*dims):
                if a is not None and a == b:
                    merged.append(a)
                elif (a, b) == _PROBES:
                    merged.append(batch_dim)
                else:
                    merged.append(None)
            if value.shape is not None and len(value.shape) == len(merged):  # keep what was known
                merged = [old if isinstance(old, int) or new is None else new
                          for old, new in zip(value.shape, merged)]
            shape = ir.Shape(merged)
            if shape != value.shape:
                value.shape, modified = shape, True
        return ir.passes.PassResult(model, modified=modified)


def _probe(model: onnx.ModelProto, image: str, batch: int) -> dict[str, list[int | None]] | None:
    """Every value's inferred dims on a copy of ``model`` whose image batch is ``batch``
    (``None`` when the copy cannot be analysed: then nothing is learnt)."""
    try:
        copy = ir.from_proto(model)
        source = next(v for v in copy.graph.inputs if v.name == image)
        source.shape = ir.Shape([batch, *list(source.shape)[1:]])
        FoldShapeComputationsPass()(copy)
        inferred = onnx.shape_inference.infer_shapes(ir.to_proto(copy), data_prop=True)
    except Exception:  # noqa: BLE001 - a copy that does not analyse teaches nothing
        return None
    found = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = info.type.tensor_type
        if info.type.HasField("tensor_type") and t.HasField("shape"):
            found[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return found
