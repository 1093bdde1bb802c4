"""JSON Schemas of the request and response bodies, for the OpenAPI document at
``/openapi.json`` (and ``/docs``).

Written out by hand rather than derived from request models because the inference body
is not always JSON (the binary tensor extension appends raw bytes after it), and because
the protocols' objects are what they are: these schemas transcribe the Open Inference
Protocol's ``$inference_request`` / ``$inference_response`` and KServe v1's
``{"instances": [...]}`` / ``{"predictions": [...]}`` so that the property-based tests
can hold every answer against them.
"""

from __future__ import annotations

from typing import Any

from onnx_explain.serve.errors import ERROR_SCHEMA

_PARAMETERS = {"type": "object", "additionalProperties": True}
_SHAPE = {"type": "array", "items": {"type": "integer"}}

TENSOR_METADATA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": _SHAPE},
}

MODEL_METADATA = {
    "type": "object",
    "required": ["name", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": TENSOR_METADATA},
        "outputs": {"type": "array", "items": TENSOR_METADATA},
    },
}

SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}

LIVE = {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}}
READY = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
MODEL_READY = {
    "type": "object",
    "required": ["name", "ready"],
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
}

# A tensor as the protocol writes it, in requests (inputs) and responses (outputs) alike.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": _SHAPE,
        "datatype": {"type": "string"},
        "parameters": _PARAMETERS,
        "data": {"type": "array"},
    },
}

INFERENCE_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {
            "type": "array",
            "items": _TENSOR,
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _PARAMETERS},
            },
        },
    },
}

INFERENCE_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "outputs": {
            "type": "array",
            "items": _TENSOR,
        },
    },
}

_INSTANCE = {
    "type": "object",
    "required": ["b64"],
    "properties": {"b64": {"type": "string", "description": "the image file's bytes (JPEG, PNG, BMP, TIFF, WebP), base64"}},
}
_TARGET = {
    "description": "class to explain: an index, -1 or \"top1\" (the top-1 class), or a list with one per instance",
    "oneOf": [
        {"type": "integer"},
        {"type": "string", "enum": ["top1"]},
        {"type": "null"},
        {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "string", "enum": ["top1"]}, {"type": "null"}]}},
    ],
}

V1_PREDICT_REQUEST = {
    "type": "object",
    "properties": {
        "instances": {"type": "array", "items": _INSTANCE},
        "parameters": {"type": "object", "properties": {"top_k": {"type": "integer", "minimum": 1}}},
    },
}

V1_EXPLAIN_REQUEST = {
    "type": "object",
    "properties": {
        "instances": {"type": "array", "items": _INSTANCE},
        "parameters": {
            "type": "object",
            "properties": {
                "method": {
                    "description": "method name, or a list of them (one explanation per instance and method)",
                    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                },
                "target": _TARGET,
                "top_k": {"type": "integer", "minimum": 1},
                "map": {"type": "boolean", "description": "the method's low-resolution map in [0, 1] (default true)"},
                "heatmap": {"type": "boolean", "description": "the full-resolution heatmap, FP32 little-endian base64"},
                "overlay": {"type": "boolean", "description": "the overlay PNG (heatmap, box, label), base64"},
                "options": {"type": "object", "description": "method options (smoothgrad: n_samples, stdev_spread, "
                                                             "seed; integrated_gradients: n_steps, method; "
                                                             "scorecam: weighting)"},
            },
        },
    },
}

PREDICTION = {
    "type": "object",
    "required": ["classes", "labels", "probabilities"],
    "properties": {
        "classes": {"type": "array", "items": {"type": "integer"}},
        "labels": {"type": "array", "items": {"type": "string"}},
        "probabilities": {"type": "array", "items": {"type": "number"}},
    },
}

_BINARY_ARRAY = {
    "type": "object",
    "required": ["shape", "datatype", "b64"],
    "properties": {"shape": _SHAPE, "datatype": {"type": "string"}, "b64": {"type": "string"}},
}

EXPLANATION = {
    "type": "object",
    "required": ["instance", "method", "class", "label", "probability", "box"],
    "properties": {
        "instance": {"type": "integer"},
        "method": {"type": "string"},
        "class": {"type": "integer"},
        "label": {"type": "string"},
        "probability": {"type": "number"},
        "score": {"type": ["number", "null"]},
        "box": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]},
        "map": {"type": "array", "items": {"type": "array", "items": {"type": ["number", "null"]}}},
        "heatmap": _BINARY_ARRAY,
        "overlay": {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}},
    },
}

V1_PREDICT_RESPONSE = {
    "type": "object",
    "required": ["predictions"],
    "properties": {"predictions": {"type": "array", "items": PREDICTION}},
}

V1_EXPLAIN_RESPONSE = {
    "type": "object",
    "required": ["predictions", "explanations"],
    "properties": {
        "predictions": {"type": "array", "items": PREDICTION},
        "explanations": {"type": "array", "items": EXPLANATION},
    },
}

V1_MODELS = {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {"type": "string"}}}}


def json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a JSON request body."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def answer(description: str, schema: dict[str, Any] | None = None, headers: dict | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    if headers:
        out["headers"] = headers
    return out


def error(description: str, retry: bool = False) -> dict[str, Any]:
    headers = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}} if retry else None
    return answer(description, ERROR_SCHEMA, headers)


#: The error answers every model route can give.
COMMON_ERRORS = {
    400: error("bad request: the reason is in 'error'"),
    401: error("missing or wrong bearer token (when the server has one)"),
    404: error("unknown model or version"),
    413: error("request body or batch too large"),
    503: error("not ready, queue full or shutting down", retry=True),
    504: error("no answer within the request timeout"),
}
