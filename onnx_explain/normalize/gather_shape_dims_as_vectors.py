"""Pass: let the folder see the sizes a graph reads from a tensor's shape one at a time.

``x.size(2)`` in a TorchScript export is ``Gather(Shape(x), 2)``, with a scalar index.
With a dynamic batch the ``Shape`` is not constant, so it folds only through onnxscript's
partial evaluation of shapes, which picks static sizes out of a partly symbolic shape for
a one-dimensional index only. timm's TF-style "same" padding computes every pad from such
scalar picks, so none of them folded. This pass writes each one as
``Squeeze(Gather(Shape(x), [i]), [0])``: the same integer, in the form the folder resolves
wherever that size is static (an image size fixed by :class:`FixImageSizePass`, and every
size downstream of it, in one run of :class:`FoldShapeComputationsPass`).
"""

from __future__ import annotations

import onnx_ir as ir


class GatherShapeDimsAsVectorsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_explain.autodiff.emitter import Emitter  # here: autodiff imports the normaliser

        graph = model.graph
        em = Emitter(graph, prefix="shape_dims")  # its deduplicated integer constants
        modified = False
        for node in list(graph):
            if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
                continue
            source = node.inputs[0].producer()
            index = node.inputs[1].const_value if node.inputs[1] is not None else None
            axis = node.attributes["axis"].value if "axis" in node.attributes else 0
            if (source is None or source.op_type != "Shape" or source.domain not in ("", "ai.onnx")
                    or index is None or index.shape != ir.Shape([]) or axis != 0):
                continue
            name = node.outputs[0].name
            picked = ir.Node("", "Gather", [node.inputs[0], em.ints([int(index.numpy())])],
                             attributes=[ir.AttrInt64("axis", 0)], num_outputs=1, name=f"{node.name}__vector")
            picked.outputs[0].name = f"{name}__vector"
            picked.outputs[0].dtype = ir.DataType.INT64
            squeeze = ir.Node("", "Squeeze", [picked.outputs[0], em.ints([0])], num_outputs=1, name=f"{node.name}__scalar")
            squeeze.outputs[0].dtype = ir.DataType.INT64
            graph.insert_before(node, [picked, squeeze])
            ir.convenience.replace_all_uses_with(node.outputs[0], squeeze.outputs[0])
            was_output = node.outputs[0].is_graph_output()
            graph.remove(node, safe=not was_output)
            if was_output:
                graph.outputs[graph.outputs.index(node.outputs[0])] = squeeze.outputs[0]
            squeeze.outputs[0].name = name  # the value keeps its name
            modified = True
        return ir.passes.PassResult(model, modified=modified)
