"""The explain-model contract: the stable names and metadata keys every part agrees on.

An explain model is an ordinary ONNX model; this module is the single place that knows
what its extra inputs/outputs are called and how its self-description is stored in
``metadata_props``.  The augmenter writes it, the runtime reads it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

FORMAT_VERSION = "1"
METADATA_PREFIX = "onnx_explain."

# Inputs/outputs added by the augmenter.
TARGET = "target"  # N, int64: class per image, negative = top-1
TARGET_CLASS = "target_class"  # N, int64: class actually explained
SCORE = "score"  # N: the differentiated score (pre-softmax logit)
ACTIVATIONS = "activations"  # N x K x h x w
GRAD_ACTIVATIONS = "grad_activations"  # N x K x h x w
GRAD_INPUT = "grad_input"  # like the image input
GUIDED_GRAD_INPUT = "guided_grad_input"  # like the image input
GRADCAM = "gradcam"  # N x H x W in [0, 1]

OPTIONAL_OUTPUTS = (GRAD_INPUT, GUIDED_GRAD_INPUT, GRADCAM)


@dataclasses.dataclass
class Preprocess:
    """How an image becomes the model's input tensor.

    Pixels are read as RGB (or BGR, per ``color``) in 0..255, resized per ``resize``,
    multiplied by ``scale``, then normalised ``(x - mean) / std`` per channel.

    ``resize``:
      * ``"stretch"``: resize straight to ``size`` (aspect ratio not kept);
      * ``"center_crop"``: resize the shorter side to ``resize_shorter`` then crop the
        centre ``size`` (the torchvision ImageNet recipe: 256 then 224); ``None``: the
        shorter side to the input's, i.e. the largest centred crop;
      * ``"letterbox"``: fit inside ``size`` keeping aspect ratio, pad with ``pad_value``.

    Padding (letterbox, or a ``center_crop`` whose ``resize_shorter`` is smaller than
    ``size``) is ``pad_value`` in pixel units (0..255, before ``scale``): one value, or
    one per channel in the tensor's channel order like ``mean``/``std``.  ``pad_align``
    places the image on the padded input: ``"center"`` (padding split evenly) or
    ``"topleft"`` (image in the top-left corner, padding on the right and bottom, as
    text-recognition models expect).

    Every field has a default, and the JSON of older files (without ``pad_align``, with a
    single ``pad_value``) reads back unchanged.
    """

    size: tuple[int, int] = (224, 224)  # (height, width)
    layout: str = "NCHW"  # or "NHWC"
    color: str = "RGB"  # or "BGR"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: str = "stretch"
    resize_shorter: int | None = None
    pad_value: float | tuple[float, ...] = 0.0
    pad_align: str = "center"  # or "topleft"

    @property
    def pad_values(self) -> tuple[float, ...]:
        """``pad_value`` as a tuple (one value, or one per channel)."""
        v = self.pad_value
        return tuple(float(x) for x in v) if isinstance(v, (tuple, list)) else (float(v),)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        pad = self.pad_values
        d["pad_value"] = pad[0] if len(pad) == 1 else list(pad)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str | dict) -> "Preprocess":
        d = json.loads(text) if isinstance(text, str) else dict(text)
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        if "size" in d:
            size = d["size"]
            d["size"] = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        if "pad_value" in d:
            pad = d["pad_value"]
            if isinstance(pad, (list, tuple)):
                d["pad_value"] = float(pad[0]) if len(pad) == 1 else tuple(float(v) for v in pad)
            else:
                d["pad_value"] = float(pad)
        return cls(**d)


@dataclasses.dataclass
class ExplainMetadata:
    """The self-description written into an explain model's ``metadata_props``."""

    version: str = FORMAT_VERSION
    target_layer: str = ""
    score: str = "logit"  # what is differentiated: the pre-softmax logit
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # role -> output name
    preprocess: Preprocess | None = None
    labels: list[str] | None = None
    # CAM's classifier: {"weight": initializer, "transposed": bool, "bias": initializer | None}
    cam: dict[str, Any] | None = None

    def to_props(self) -> dict[str, str]:
        props = {
            "version": self.version,
            "target_layer": self.target_layer,
            "score": self.score,
            "outputs": json.dumps(self.outputs),
        }
        if self.preprocess is not None:
            props["preprocess"] = self.preprocess.to_json()
        if self.labels is not None:
            props["labels"] = json.dumps(list(self.labels))
        if self.cam is not None:
            props["cam"] = json.dumps(self.cam)
        return {METADATA_PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ExplainMetadata | None":
        """Read from a ``metadata_props`` mapping; ``None`` when it is not an explain model."""
        ours = {k[len(METADATA_PREFIX):]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        if "version" not in ours:
            return None
        pre = ours.get("preprocess")
        labels = ours.get("labels")
        cam = ours.get("cam")
        return cls(
            version=ours["version"],
            target_layer=ours.get("target_layer", ""),
            score=ours.get("score", "logit"),
            outputs=json.loads(ours.get("outputs", "{}")),
            preprocess=Preprocess.from_json(pre) if pre else None,
            labels=json.loads(labels) if labels else None,
            cam=json.loads(cam) if cam else None,
        )


def read_plain_metadata(props: dict[str, str]) -> dict[str, Any]:
    """Preprocess/labels that an exporter stored on a *plain* model (same keys), if any."""
    out: dict[str, Any] = {}
    if METADATA_PREFIX + "preprocess" in props:
        out["preprocess"] = Preprocess.from_json(props[METADATA_PREFIX + "preprocess"])
    if METADATA_PREFIX + "labels" in props:
        out["labels"] = json.loads(props[METADATA_PREFIX + "labels"])
    return out
