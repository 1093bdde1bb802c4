"""The explain-model contract: the stable names and metadata keys every part agrees on.

An explain model is an ordinary ONNX model; this module is the single place that knows
what its extra inputs/outputs are called and how its self-description is stored in
``metadata_props``.  The augmenter writes it, the runtime reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from onnx_explain.errors import ModelError

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

# In-graph outputs for consumers with no Python (augment --outputs / --pixels).
GRADCAM_PLUSPLUS = "gradcam_plusplus"  # N x H x W in [0, 1]: Grad-CAM++ at input size
LAYERCAM = "layercam"  # N x H x W in [0, 1]: LayerCAM at input size
PROBABILITIES = "probabilities"  # N x classes: softmax of the logits (metadata role "softmax")
TOP_K = "top_k"  # shorthand in --outputs for the next two
TOP_K_VALUES = "top_k_values"  # N x k: the k largest probabilities, largest first
TOP_K_INDICES = "top_k_indices"  # N x k, int64: their classes
SOFTMAX_ROLE = "softmax"  # metadata role of PROBABILITIES ("probabilities" is the model's own output's role)
IN_GRAPH_MAPS = (GRADCAM, GRADCAM_PLUSPLUS, LAYERCAM)
#: Every output the augmenter can add, in the order it adds them (``augment --outputs``).
ALL_OUTPUTS = (TARGET_CLASS, SCORE, ACTIVATIONS, GRAD_ACTIVATIONS, GRAD_INPUT, GUIDED_GRAD_INPUT,
               GRADCAM, GRADCAM_PLUSPLUS, LAYERCAM, PROBABILITIES, TOP_K_VALUES, TOP_K_INDICES)
#: Outputs computed only when their flag input ``compute_<name>`` is true (files written on demand).
ON_DEMAND_OUTPUTS = (GRAD_INPUT, GUIDED_GRAD_INPUT)
PIXELS = "pixels"  # N x H x W x 3 uint8 RGB image input of a file written with --pixels


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
                v = d[key]
                d[key] = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (float(v),)
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
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ExplainMetadata | None":
        """Read from a ``metadata_props`` mapping; ``None`` when it is not an explain model.

        Every value is checked against :data:`METADATA_SCHEMA` first (types, finite numbers,
        sane sizes): a bad one is a :class:`~onnx_explain.errors.ModelError` naming ``where``
        (the model file) and the key.
        """
        ours = {k[len(METADATA_PREFIX):]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}
        if "version" not in ours:
            return None
        values = validate_metadata(ours, where)
        pre = values.get("preprocess")
        return cls(
            version=values["version"],
            target_layer=values.get("target_layer", ""),
            score=values.get("score", "logit"),
            outputs=values.get("outputs") or {},
            preprocess=Preprocess.from_json(pre) if pre else None,
            labels=values.get("labels"),
            cam=values.get("cam"),
        )


def read_plain_metadata(props: dict[str, str], where: str = "model") -> dict[str, Any]:
    """Preprocess/labels that an exporter stored on a *plain* model (same keys), if any,
    checked like an explain model's (:func:`validate_metadata`)."""
    ours = {k: props[METADATA_PREFIX + k] for k in ("preprocess", "labels") if METADATA_PREFIX + k in props}
    values = validate_metadata(ours, where)
    out: dict[str, Any] = {}
    if "preprocess" in values:
        out["preprocess"] = Preprocess.from_json(values["preprocess"])
    if "labels" in values:
        out["labels"] = values["labels"]
    return out


# --------------------------------------------------------------------------- validation
#
# The metadata is input like any other: a file from elsewhere may carry NaN scales, a
# 60000 x 60000 size (40 GB per image), labels that are a number, or text that is not
# JSON.  Each value is checked once, when the model is loaded, against a small schema in
# the spirit of JSON Schema (type, enum, bounds, items, properties).

MAX_SIDE = 16384  # the largest input side accepted (as `augment --size` and `export --input-size`)
MAX_LABELS = 1_000_000
MAX_TEXT = 4096  # names: version, layer, output names

_NAME = {"type": "string", "maxLength": MAX_TEXT}
# Numbers are always finite here (JSON has no NaN / Infinity), and bounded so that
# (pixel * scale - mean) / std stays a finite float32.
_VALUE = {"type": "number", "minimum": -1_000_000, "maximum": 1_000_000}
_CHANNEL_VALUES = {"anyOf": [_VALUE, {"type": "array", "items": _VALUE, "minItems": 1, "maxItems": 4}]}
_STD = {"type": "number", "minAbs": 1e-6, "maxAbs": 1_000_000}
_SIDE = {"type": "integer", "minimum": 1, "maximum": MAX_SIDE}

PREPROCESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "size": {"anyOf": [_SIDE, {"type": "array", "items": _SIDE, "minItems": 2, "maxItems": 2}]},
        "layout": {"enum": ["NCHW", "NHWC"]},
        "color": {"enum": ["RGB", "BGR", "GRAY"]},
        "scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000},
        "mean": _CHANNEL_VALUES,
        "std": {"anyOf": [_STD, {"type": "array", "items": _STD, "minItems": 1, "maxItems": 4}]},
        "resize": {"enum": ["stretch", "center_crop", "letterbox"]},
        "resize_shorter": {"anyOf": [{"type": "null"}, _SIDE]},
        "pad_value": _CHANNEL_VALUES,
        "pad_align": {"enum": ["center", "topleft"]},
    },
}

METADATA_SCHEMA: dict[str, dict[str, Any]] = {
    # key (after the prefix) -> (schema of its value; "json": the value is JSON text)
    "version": _NAME,
    "target_layer": _NAME,
    "score": _NAME,
    "outputs": {"json": True, "type": "object", "additionalProperties": _NAME},
    "preprocess": {"json": True, **PREPROCESS_SCHEMA},
    "labels": {"json": True, "type": "array", "items": {"type": "string", "maxLength": MAX_TEXT},
               "maxItems": MAX_LABELS},
    "cam": {"json": True, "anyOf": [
        {"type": "null"},
        {"type": "object", "required": ["weight", "transposed"], "properties": {
            "weight": _NAME, "transposed": {"type": "boolean"}, "bias": {"anyOf": [{"type": "null"}, _NAME]}}},
    ]},
}


class _Invalid(Exception):
    pass


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_TYPES = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_TYPE_WORDS = {"string": "a string", "boolean": "true or false", "null": "null", "integer": "an integer",
               "number": "a finite number", "array": "a list", "object": "an object"}


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    text = _TYPE_WORDS.get(schema.get("type", ""), "a value")
    if schema.get("type") == "array" and "items" in schema:
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        count = (f"{lo}" if lo == hi else f"{lo or 0}..{hi}") if hi is not None else (f"at least {lo}" if lo else "")
        text = f"a list of {count + ' ' if count else ''}items, each {_describe(schema['items'])}"
        return text
    bounds = []
    if "minimum" in schema and "maximum" in schema:
        bounds.append(f"in {schema['minimum']}..{schema['maximum']}")
    elif "minimum" in schema:
        bounds.append(f">= {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        bounds.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema and "minimum" not in schema:
        bounds.append(f"<= {schema['maximum']:g}")
    if "minAbs" in schema:
        bounds.append(f"of magnitude {schema['minAbs']:g}..{schema['maxAbs']:g}")
    if "maxLength" in schema:
        bounds.append(f"of at most {schema['maxLength']} characters")
    return " ".join([text, " and ".join(bounds)]) if bounds else text


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    """Raise :class:`_Invalid` naming ``path`` where ``value`` does not fit ``schema``."""
    if "anyOf" in schema:
        fitting = []  # errors of the options whose type the value has: the one meant
        for option in schema["anyOf"]:
            try:
                _check(value, option, path)
                return
            except _Invalid as e:
                kind = option.get("type")
                if kind and _TYPES[kind](value) or (kind == "number" and isinstance(value, (int, float))
                                                    and not isinstance(value, bool)):
                    fitting.append(e)
        if len(fitting) == 1:
            raise fitting[0]
        raise _Invalid(f"{path} must be {_describe(schema)}, got {_shown(value)}")
    if "enum" in schema:
        if not any(value == v and type(value) is type(v) for v in schema["enum"]):
            raise _Invalid(f"{path} must be {_describe(schema)}, got {_shown(value)}")
        return
    kind = schema.get("type")
    ok = _TYPES[kind](value) if kind else True
    if ok and kind in ("integer", "number"):
        ok = (value >= schema.get("minimum", -math.inf) and value <= schema.get("maximum", math.inf)
              and value > schema.get("exclusiveMinimum", -math.inf)
              and schema.get("minAbs", 0) <= abs(value) <= schema.get("maxAbs", math.inf))
    if ok and kind == "string":
        ok = len(value) <= schema.get("maxLength", math.inf)
    if ok and kind == "array":
        ok = schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf)
    if not ok:
        raise _Invalid(f"{path} must be {_describe(schema)}, got {_shown(value)}")
    if kind == "array" and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")
    if kind == "object":
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise _Invalid(f"{path} has no {missing[0]!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            where = f"{path}.{k}"
            if k in props:
                _check(v, props[k], where)
            elif isinstance(extra, dict):
                _check(v, extra, where)


def validate_metadata(values: dict[str, str], where: str = "model") -> dict[str, Any]:
    """Check our metadata values (keys without the prefix) against :data:`METADATA_SCHEMA`;
    return them parsed (JSON values decoded).  A bad value is a
    :class:`~onnx_explain.errors.ModelError`: ``"<where>: metadata onnx_explain.<key>...: <problem>"``."""
    out: dict[str, Any] = {}
    for key, text in values.items():
        schema = METADATA_SCHEMA.get(key)
        if schema is None:
            continue  # a key of a later format version: not ours to judge
        name = METADATA_PREFIX + key
        if not isinstance(text, str):
            raise ModelError(f"{where}: metadata {name}: must be text, got {type(text).__name__}")
        value: Any = text
        if schema.get("json"):
            try:
                value = _parse_json(text)
            except ValueError as e:
                raise ModelError(f"{where}: metadata {name} is not valid JSON ({' '.join(str(e).split())})") from None
        try:
            _check(value, schema, name)
        except _Invalid as e:
            raise ModelError(f"{where}: metadata {e}") from None
        if key == "preprocess":
            _check_preprocess_relations(value, where, name)
        out[key] = value
    return out


def _check_preprocess_relations(value: dict[str, Any], where: str, name: str) -> None:
    channels = 1 if value.get("color") == "GRAY" else 3
    for key in ("mean", "std", "pad_value"):
        v = value.get(key)
        if isinstance(v, list) and len(v) not in (1, channels):
            raise ModelError(f"{where}: metadata {name}: {key} has {len(v)} values for a {channels}-channel input")
    size = value.get("size", 224)
    largest = max(size) if isinstance(size, list) else size
    shorter = value.get("resize_shorter")
    if shorter is not None and shorter > 8 * largest:
        # every image would be enlarged to this before the crop: 16384 on a 32x32 input is
        # a 1.2 GB picture per image
        raise ModelError(f"{where}: metadata {name}.resize_shorter {shorter} is more than 8x the input size "
                         f"({largest})")
