"""Pass: give the image input a static height and width.

OCR and fully-convolutional classifiers declare ``N x 3 x ? x ?``. The analysis needs the
spatial sizes (static pads, pooling windows, the Grad-CAM map's size), so the size the
user gives (``--size``, or the size in the model's preprocessing metadata) is written into
the input's shape; the batch stays dynamic. A fixed size that contradicts it is an error.
"""

from __future__ import annotations

import onnx_ir as ir

from onnx_explain.errors import ModelError


class FixImageSizePass(ir.passes.InPlacePass):
    def __init__(self, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_explain.augment.graph_facts import find_image_input, input_layout

        image = find_image_input(model.graph)
        dims = list(image.shape)
        layout = input_layout(image)
        hw_axes = (2, 3) if layout == "NCHW" else (1, 2)
        current = tuple(dims[a] if isinstance(dims[a], int) else None for a in hw_axes)
        shown = "[" + ", ".join(str(d) if isinstance(d, int) else "?" if d is None or d.value is None else d.value
                                for d in dims) + "]"
        if self.size is None:
            if None in current:
                raise ModelError(
                    f"the image input {image.name!r} has a dynamic height/width {shown}: give the size the "
                    "model expects with --size HxW")
            return ir.passes.PassResult(model, modified=False)
        if any(c is not None and c != s for c, s in zip(current, self.size)):
            raise ModelError(
                f"--size {self.size[0]}x{self.size[1]} contradicts the fixed shape {shown} of the image input "
                f"{image.name!r} (height x width {'x'.join(str(c or '?') for c in current)}); leave --size out")
        if None not in current:
            return ir.passes.PassResult(model, modified=False)
        for axis, value in zip(hw_axes, self.size):
            dims[axis] = value
        image.shape = ir.Shape(dims)
        # stale inferred shapes of the old dynamic sizes must not survive into re-inference
        for node in model.graph:
            for out in node.outputs:
                if not out.is_graph_output():
                    out.shape = None
        return ir.passes.PassResult(model, modified=True)
