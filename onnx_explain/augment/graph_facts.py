"""What the augmenter needs to know about a classifier graph: its image input, its logits."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnx_explain.errors import ModelError

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16}
_PASS_THROUGH = {"Identity"}


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
    value = output
    while value.producer() is not None and value.producer().op_type in _PASS_THROUGH:
        value = value.producer().inputs[0]
    producer = value.producer()
    if producer is not None and producer.op_type in ("Softmax", "LogSoftmax"):
        return producer.inputs[0], True
    return output, False


_CHANNEL_FIRST_PRODUCERS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "Resize"}
_ELEMENTWISE = {"Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSwish", "HardSigmoid", "LeakyRelu", "PRelu",
                "Identity", "Tanh", "Sub", "Div", "Concat", "Dropout", "Erf", "Gelu"}


def activation_layout(value: ir.Value, classifier: Classifier) -> str:
    """Channel-first unless the value provably comes from a channel-last computation."""
    seen = 0
    while seen < 100:
        seen += 1
        producer = value.producer()
        if producer is None:
            return classifier.layout if value is classifier.image else "NCHW"
        op = producer.op_type
        if op in _CHANNEL_FIRST_PRODUCERS:
            return "NCHW"
        if op == "Transpose":
            perm = list(producer.attributes["perm"].value) if "perm" in producer.attributes else None
            if perm == [0, 2, 3, 1]:
                return "NHWC"
            return "NCHW"
        if op in _ELEMENTWISE:
            value = next((v for v in producer.inputs if v is not None and v.shape is not None and len(v.shape) == 4), None)
            if value is None:
                return "NCHW"
            continue
        return "NCHW"
    return "NCHW"
