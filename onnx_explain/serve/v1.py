"""KServe v1 (the TensorFlow Serving REST shape): ``GET /v1/models``,
``GET /v1/models/{name}``, ``POST /v1/models/{name}:predict`` and ``:explain``.

Images travel as ``{"instances": [{"b64": "<base64 image file>"}, ...]}``; nothing in a
request can name a file or a URL on the server.  ``parameters`` choose the method(s), the
target class, top-k and what comes back: ``:explain`` answers
``{"predictions": [...], "explanations": [...]}`` with, per instance and method, the class
explained, its label and probability, the box, the low-resolution map and, on request,
the full-resolution heatmap (FP32, base64) and the overlay PNG (base64).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from onnx_explain.images import LoadedImage
from onnx_explain.methods import METHODS
from onnx_explain.serve import schemas
from onnx_explain.serve.errors import ApiError, bad_request, quoted
from onnx_explain.serve.model import STOCHASTIC_METHODS
from onnx_explain.serve.render import explanation_json, prediction_json
from onnx_explain.serve.state import ServerState
from onnx_explain.serve.v2 import parse_json

router = APIRouter(tags=["KServe v1"])

DEFAULT_TOP_K = 5
MAX_METHODS = 4


def _state(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/v1/models", summary="List models", responses={200: schemas.answer("model names", schemas.V1_MODELS),
                                                              401: schemas.COMMON_ERRORS[401]})
async def list_models(request: Request) -> dict:
    return {"models": [_state(request).model.name]}


@router.get("/v1/models/{model_name}", summary="Model ready",
            responses={200: schemas.answer("ready", schemas.MODEL_READY),
                       503: schemas.answer("not ready", schemas.MODEL_READY),
                       **{k: schemas.COMMON_ERRORS[k] for k in (401, 404)}})
async def model_ready(request: Request, model_name: str) -> JSONResponse:
    state = _state(request)
    state.require_model(model_name)
    ok = state.model.ready
    return JSONResponse({"name": state.model.name, "ready": ok}, status_code=200 if ok else 503)


async def _read(request: Request, model_name: str) -> tuple[ServerState, dict]:
    state = _state(request)
    state.require_model(model_name)
    state.require_ready()
    doc = parse_json(await request.body())
    if not isinstance(doc, dict):
        raise bad_request("the request must be a JSON object")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be an object")
    return state, doc


def instances_of(state: ServerState, doc: dict) -> list[dict]:
    """The request's ``instances`` (or ``inputs``), each ``{"b64": ...}``, checked."""
    instances = doc.get("instances", doc.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise bad_request("'instances' must be a non-empty list of {\"b64\": \"<base64 image>\"}")
    if len(instances) > state.config.max_images_per_request:
        raise ApiError(413, f"{len(instances)} instances: this server takes at most "
                            f"{state.config.max_images_per_request} per request")
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or set(inst) != {"b64"}:
            raise bad_request(f"instance {i}: expected {{\"b64\": \"<base64 image file>\"}}; "
                              "images are sent in the request, never named by path or URL")
    return instances


async def decode_instances(state: ServerState, instances: list[dict]) -> list[LoadedImage]:
    async with state.decode_slots:
        return await run_in_threadpool(
            lambda: [state.decoder.decode_b64(inst["b64"], f"instance {i}") for i, inst in enumerate(instances)]
        )


def top_k_of(state: ServerState, params: dict) -> int:
    k = params.get("top_k", DEFAULT_TOP_K)
    n = state.model.num_classes or 1
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise bad_request(f"top_k must be a positive integer, got {quoted(k)}")
    return min(k, n)


def _flag(params: dict, name: str, default: bool) -> bool:
    v = params.get(name, default)
    if not isinstance(v, bool):
        raise bad_request(f"parameter {name!r} must be true or false")
    return v


def methods_of(state: ServerState, value: Any) -> list[str]:
    methods = ["gradcam"] if value is None else ([value] if isinstance(value, str) else value)
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise bad_request("'method' must be a method name or a non-empty list of them")
    if len(methods) > MAX_METHODS or len(set(methods)) != len(methods):
        raise bad_request(f"at most {MAX_METHODS} different methods per request")
    for m in methods:
        problem = state.model.method_problem(m)
        if problem:
            raise bad_request(problem)
    return methods


def options_of(state: ServerState, methods: list[str], raw: Any) -> dict[str, dict]:
    """``options``: the one method's options, or ``{method: {...}}`` for several."""
    if raw is None:
        per: dict = {}
    elif isinstance(raw, dict) and raw and all(k in METHODS for k in raw):
        per = raw
    elif len(methods) == 1:
        per = {methods[0]: raw}
    else:
        raise bad_request("with several methods, give 'options' per method: {\"smoothgrad\": {\"n_samples\": 10}}")
    for name in per:
        if name not in methods:
            raise bad_request(f"options for {name!r}, which the request does not ask for")
    return {m: state.model.check_options(m, per.get(m)) for m in methods}


def targets_of(state: ServerState, value: Any, n: int) -> list[int]:
    if isinstance(value, list):
        if len(value) != n:
            raise bad_request(f"'target' has {len(value)} entries for {n} instances")
        return [state.model.check_target(v, f"instance {i}") for i, v in enumerate(value)]
    t = state.model.check_target(value, "parameters")
    return [t] * n


@router.post("/v1/models/{model_name}:predict", summary="Predict (top-k classes)",
             openapi_extra=schemas.json_body(schemas.V1_PREDICT_REQUEST),
             responses={200: schemas.answer("top-k classes per instance", schemas.V1_PREDICT_RESPONSE),
                        **schemas.COMMON_ERRORS})
async def predict(request: Request, model_name: str) -> dict:
    state, doc = await _read(request, model_name)
    params = doc.get("parameters") or {}
    k = top_k_of(state, params)
    images = await decode_instances(state, instances_of(state, doc))
    preds = await state.submit(request, ("predict",), len(images), (images, k))
    return {"predictions": [prediction_json(p, k) for p in preds]}


@router.post("/v1/models/{model_name}:explain", summary="Explain (class, box, maps, overlay)",
             openapi_extra=schemas.json_body(schemas.V1_EXPLAIN_REQUEST),
             responses={200: schemas.answer("predictions and explanations", schemas.V1_EXPLAIN_RESPONSE),
                        **schemas.COMMON_ERRORS})
async def explain(request: Request, model_name: str) -> JSONResponse:
    state, doc = await _read(request, model_name)
    params = doc.get("parameters") or {}
    methods = methods_of(state, params.get("method"))
    k = top_k_of(state, params)
    want = {"want_map": _flag(params, "map", True), "want_heatmap": _flag(params, "heatmap", False),
            "want_overlay": _flag(params, "overlay", False)}
    options = options_of(state, methods, params.get("options"))
    instances = instances_of(state, doc)
    targets = targets_of(state, params.get("target"), len(instances))
    images = await decode_instances(state, instances)
    doc_out = await run_explain(state, request, images, methods, targets, k, options, want)
    return JSONResponse(doc_out)


def explain_key(method: str, options: dict) -> tuple:
    """Batch key: requests for the same method and options share model calls.  A method
    drawing random noise (SmoothGrad) gets a key of its own per request, so that its
    answer never depends on which other requests arrived at the same time."""
    alone = object() if method in STOCHASTIC_METHODS else None
    return ("explain", method, tuple(sorted(options.items())), alone)


async def run_explain(state: ServerState, request: Request, images: list[LoadedImage], methods: list[str],
                      targets: list[int], k: int, options: dict[str, dict], want: dict[str, bool]) -> dict:
    """Each method is its own batch item, batched with other requests' for the same method."""
    results = []
    for m in methods:
        key = explain_key(m, options[m])
        results.append(await state.submit(request, key, len(images), (images, targets, k)))
    first = results[0]

    def render() -> dict:
        predictions = [prediction_json(e.top_k, k) for e in first]
        explanations = [
            explanation_json(e, i, images[i], **want)
            for i in range(len(images)) for per_method in results for e in [per_method[i]]
        ]
        return {"predictions": predictions, "explanations": explanations}

    return await run_in_threadpool(render)
