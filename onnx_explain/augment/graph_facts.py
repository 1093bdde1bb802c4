"""What the augmenter needs to know about a classifier graph: its image input, its logits."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnx_explain.errors import ModelError

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16}
# Ops that exporters and converters wrap around the final Softmax without changing which
# class scores it normalises (onnx.version_converter: Flatten -> Softmax -> Reshape).
_SOFTMAX_WRAPPERS = {"Identity", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Dropout"}


@dataclasses.dataclass
class Classifier:
    """The parts of an image classifier graph the explain model is built around."""

    image: ir.Value  # the image input
    layout: str  # "NCHW" or "NHWC"
    output: ir.Value  # the model's first output (logits or probabilities)
    logits: ir.Value  # the pre-softmax logits, N x classes
    ends_in_softmax: bool
    num_classes: int

    @property
    def spatial_size(self) -> tuple[int, int]:
        dims = list(self.image.shape)
        h, w = (dims[2], dims[3]) if self.layout == "NCHW" else (dims[1], dims[2])
        if not isinstance(h, int) or not isinstance(w, int):
            raise ModelError(f"the image input {self.image.name!r} needs a fixed height and width, got {dims}")
        return h, w


def find_classifier(graph: ir.Graph) -> Classifier:
    image = find_image_input(graph)
    if not graph.outputs:
        raise ModelError("the model has no outputs")
    output = graph.outputs[0]
    logits, softmax = _pre_softmax(output)
    shape = logits.shape
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int):
        raise ModelError(
            f"expected the first output (or the input of its final Softmax) to be N x classes logits, "
            f"got {output.name!r} with shape {list(shape) if shape is not None else 'unknown'}"
        )
    return Classifier(image, input_layout(image), output, logits, softmax, int(shape[1]))


def find_image_input(graph: ir.Graph) -> ir.Value:
    inits = set(graph.initializers)
    images = [
        v for v in graph.inputs
        if v.name not in inits and v.shape is not None and len(v.shape) == 4 and v.dtype in _FLOATS
    ]
    if len(images) != 1:
        names = [v.name for v in graph.inputs if v.name not in inits]
        raise ModelError(f"expected exactly one 4-D float image input, found inputs {names}")
    return images[0]


def input_layout(image: ir.Value) -> str:
    dims = list(image.shape)
    if dims[1] in (1, 3, 4):
        return "NCHW"
    if dims[3] in (1, 3, 4):
        return "NHWC"
    raise ModelError(f"cannot tell the layout of image input {image.name!r} with shape {dims} (channels 1, 3 or 4 expected)")


def _pre_softmax(output: ir.Value) -> tuple[ir.Value, bool]:
    """(the logits, whether the output is their Softmax/LogSoftmax), looking through wrappers.

    The logits are the Softmax's input when it is N x classes; when a wrapper sits before the
    Softmax too (``Flatten -> Softmax -> Reshape``), the wrapper's input, if that is.
    """
    value = output
    seen = 0
    while value.producer() is not None and value.producer().op_type in _SOFTMAX_WRAPPERS and seen < 16:
        value, seen = value.producer().inputs[0], seen + 1
    producer = value.producer()
    if producer is None or producer.op_type not in ("Softmax", "LogSoftmax"):
        return output, False
    logits = producer.inputs[0]
    inner = logits
    while not _is_n_by_classes(inner) and inner.producer() is not None \
            and inner.producer().op_type in _SOFTMAX_WRAPPERS and seen < 32:
        inner, seen = inner.producer().inputs[0], seen + 1
    return (inner if _is_n_by_classes(inner) else logits), True


def _is_n_by_classes(value: ir.Value) -> bool:
    return value.shape is not None and len(value.shape) == 2 and isinstance(value.shape[1], int)


_CHANNEL_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                  "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN",
                  "GroupNormalization", "DepthToSpace", "SpaceToDepth", "MaxRoiPool"}
# Ops whose 4-D output keeps the channel axis of their first 4-D input.
_SAME_LAYOUT = {"Relu", "Clip", "Add", "Sub", "Mul", "Div", "Sigmoid", "HardSwish", "HardSigmoid", "LeakyRelu",
                "PRelu", "Identity", "Tanh", "Concat", "Dropout", "Erf", "Gelu", "Elu", "Selu", "Celu", "Softplus",
                "Mish", "Softsign", "ThresholdedRelu", "Neg", "Abs", "Exp", "Log", "Sqrt", "Pow", "Reciprocal",
                "Sum", "Mean", "Max", "Min", "Pad", "Slice", "Split", "Resize", "Upsample", "Cast", "Where",
                "Expand", "Tile", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                "ReduceL2", "LayerNormalization"}


def channel_axes(graph: ir.Graph, classifier: Classifier) -> dict[ir.Value, int]:
    """The channel axis (1 or 3) of each 4-D value, propagated forward from the image input.

    Channel-first ops (Conv, pooling, normalisations) put it on axis 1; a Transpose moves it;
    elementwise, routing and keep-dims reductions keep it. Values reached only through ops
    that say nothing (Reshape to 4-D, unknown ops) are left out: callers take channel-first.
    """
    axes: dict[ir.Value, int] = {classifier.image: 1 if classifier.layout == "NCHW" else 3}
    for node in graph:
        for out in node.outputs:
            if out.shape is None or len(out.shape) != 4:
                continue
            op = node.op_type
            if op in _CHANNEL_FIRST:
                axes[out] = 1
            elif op == "Transpose":
                src = node.inputs[0]
                perm = list(node.attributes["perm"].value) if "perm" in node.attributes else [3, 2, 1, 0]
                if src in axes and axes[src] in perm:
                    axes[out] = perm.index(axes[src])
            elif op in _SAME_LAYOUT:
                src = next((v for v in node.inputs if v is not None and v in axes), None)
                if src is not None:
                    axes[out] = axes[src]
    return axes
