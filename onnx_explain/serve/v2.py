"""Open Inference Protocol (KServe v2 / Triton) over HTTP/REST.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/1]``,
``.../ready``, and ``POST .../infer`` with JSON tensors and the binary tensor data
extension.  The model is served as it is: its own inputs (the image tensor in its own
layout, ``target``) and outputs (the logits, ``target_class``, ``score``,
``activations``, ``grad_activations``, ...).  Only the requested ``outputs`` are
computed: the request runs on the graph pruned to them, so a request for the logits never
pays for a gradient, and one for Grad-CAM's inputs never for the input gradient.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from onnx_explain import __version__
from onnx_explain.serve import schemas
from onnx_explain.serve.errors import bad_request, quoted
from onnx_explain.serve.limits import decompress
from onnx_explain.serve.state import ServerState
from onnx_explain.serve.tensors import HEADER, decode_input, encode_output, split_body

router = APIRouter(tags=["Open Inference Protocol (v2)"])

#: Most elements one input may declare (the body limit bounds the data actually sent).
_MAX_ELEMENTS = 1 << 28


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes | memoryview, what: str = "request") -> Any:
    try:
        return json.loads(bytes(data), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request(f"{what} is not valid JSON") from None


@router.get("/v2", summary="Server metadata", responses={200: schemas.answer("server metadata", schemas.SERVER_METADATA),
                                                            401: schemas.COMMON_ERRORS[401]})
async def server_metadata() -> dict:
    return {"name": "onnx-explain", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live", summary="Server live", responses={200: schemas.answer("the server is up", schemas.LIVE)})
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready", summary="Server ready",
            responses={200: schemas.answer("the model is loaded and warmed", schemas.READY),
                       503: schemas.answer("not ready yet (or the model failed to load)", schemas.READY)})
async def ready(request: Request) -> JSONResponse:
    ok = _state(request).model.ready
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


_METADATA_ANSWERS = {200: schemas.answer("model metadata", schemas.MODEL_METADATA),
                     **{k: schemas.COMMON_ERRORS[k] for k in (401, 404, 503)}}


@router.get("/v2/models/{model_name}", summary="Model metadata", responses=_METADATA_ANSWERS)
@router.get("/v2/models/{model_name}/versions/{model_version}", summary="Model metadata (version)",
            responses=_METADATA_ANSWERS)
async def model_metadata(request: Request, model_name: str, model_version: str | None = None) -> dict:
    state = _state(request)
    state.require_model(model_name, model_version)
    state.require_ready()
    return state.model.metadata()


_READY_ANSWERS = {200: schemas.answer("the model is ready", schemas.MODEL_READY),
                  503: schemas.answer("the model is not ready", schemas.MODEL_READY),
                  **{k: schemas.COMMON_ERRORS[k] for k in (401, 404)}}


@router.get("/v2/models/{model_name}/ready", summary="Model ready", responses=_READY_ANSWERS)
@router.get("/v2/models/{model_name}/versions/{model_version}/ready", summary="Model ready (version)",
            responses=_READY_ANSWERS)
async def model_ready(request: Request, model_name: str, model_version: str | None = None) -> JSONResponse:
    state = _state(request)
    state.require_model(model_name, model_version)
    ok = state.model.ready
    return JSONResponse({"name": state.model.name, "ready": ok}, status_code=200 if ok else 503)


_INFER_DOC = schemas.json_body(schemas.INFERENCE_REQUEST)
_INFER_DOC["requestBody"]["content"]["application/octet-stream"] = {
    "schema": {"type": "string", "format": "binary",
               "description": f"binary tensor extension: the JSON request (its length in the {HEADER} header) "
                            "followed by the inputs' raw bytes"}}
_INFER_ANSWERS = {
    200: {"description": "the requested outputs (binary ones after the JSON, its length in the "
                         f"{HEADER} header)",
          "content": {"application/json": {"schema": schemas.INFERENCE_RESPONSE},
                      "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    **schemas.COMMON_ERRORS,
}


@router.post("/v2/models/{model_name}/infer", summary="Inference", openapi_extra=_INFER_DOC, responses=_INFER_ANSWERS)
@router.post("/v2/models/{model_name}/versions/{model_version}/infer", summary="Inference (version)",
             openapi_extra=_INFER_DOC, responses=_INFER_ANSWERS)
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    state = _state(request)
    state.require_model(model_name, model_version)
    state.require_ready()
    body = await request.body()
    parsed = await run_in_threadpool(_parse_infer, state, body, request.headers.get("content-encoding"),
                                     request.headers.get(HEADER))
    req_id, names, binary_flags, feeds, rows, timeout_s = parsed
    key = ("infer", tuple(sorted(set(names))),
           None if not state.model.session.fixed_batch else object())
    result = await state.submit(request, key, rows, feeds, timeout_s)
    return await run_in_threadpool(_answer, state, req_id, names, binary_flags, result)


def _parse_infer(state: ServerState, body: bytes, encoding: str | None, header: str | None):
    model = state.model
    body = decompress(body, encoding, state.config.max_body_bytes)
    head, binary = split_body(body, header)
    req = parse_json(head, "the inference request")
    if not isinstance(req, dict):
        raise bad_request("the inference request must be a JSON object")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise bad_request("'id' must be a string")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be an object")
    binary_all = params.get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise bad_request("binary_data_output must be true or false")
    timeout_s = None
    if "timeout" in params:  # the Triton client's per-request timeout, in microseconds
        t = params["timeout"]
        if isinstance(t, bool) or not isinstance(t, int) or t <= 0:
            raise bad_request("parameter 'timeout' must be a positive integer (microseconds)")
        timeout_s = t / 1e6
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("'inputs' must be a non-empty list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in inputs:
        name, array, used = decode_input(spec, binary, offset, _MAX_ELEMENTS)
        if name in arrays:
            raise bad_request(f"input {quoted(name)} given twice")
        declared = model._inputs.get(name)
        if declared is not None and spec.get("datatype") != declared["datatype"]:
            raise bad_request(f"input {name!r}: datatype {quoted(spec.get('datatype'))} does not match the model's "
                              f"{declared['datatype']}")
        arrays[name] = array
        offset += used
    if offset != len(binary):
        raise bad_request(f"the body has {len(binary) - offset} binary bytes that no input declares")
    outputs = req.get("outputs")
    if outputs is None:
        names = [o["name"] for o in model.output_meta]
        binary_flags = [binary_all] * len(names)
    else:
        if not isinstance(outputs, list) or not outputs:
            raise bad_request("'outputs' must be a non-empty list (or left out for all outputs)")
        names, binary_flags = [], []
        for spec in outputs:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise bad_request("each requested output must be an object with a 'name' string")
            oparams = spec.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise bad_request(f"output {quoted(spec['name'])}: 'parameters' must be an object")
            if "classification" in oparams:
                raise bad_request("the classification extension is not supported; use KServe v1 :predict for top-k")
            flag = oparams.get("binary_data", binary_all)
            if not isinstance(flag, bool):
                raise bad_request(f"output {quoted(spec['name'])}: binary_data must be true or false")
            if spec["name"] in names:
                raise bad_request(f"output {quoted(spec['name'])} requested twice")
            names.append(spec["name"])
            binary_flags.append(flag)
    feeds, rows = model.check_infer(arrays, names)
    return req_id, names, binary_flags, feeds, rows, timeout_s


def _answer(state: ServerState, req_id: str | None, names: list[str], binary_flags: list[bool],
            result: dict[str, np.ndarray]) -> Response:
    meta = state.model._outputs
    outputs, chunks = [], []
    for name, flag in zip(names, binary_flags):
        spec, raw = encode_output(name, result[name], meta[name]["datatype"], flag)
        outputs.append(spec)
        if raw is not None:
            chunks.append(raw)
    doc: dict[str, Any] = {"model_name": state.model.name, "model_version": "1", "outputs": outputs}
    if req_id is not None:
        doc["id"] = req_id
    head = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(b"".join([head, *chunks]), media_type="application/octet-stream",
                    headers={HEADER: str(len(head))})
