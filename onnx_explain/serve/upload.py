"""For people: ``POST /explain`` with a multipart upload.

    curl -F image=@cat.jpg http://127.0.0.1:8080/explain                        # JSON
    curl -F image=@cat.jpg -H 'Accept: image/png' http://127.0.0.1:8080/explain -o cat.png

JSON is the KServe v1 ``:explain`` answer for the one image; with ``Accept: image/png``
the answer is the overlay PNG of the first method (the picture ``onnx-explain explain``
writes).  The upload's file name is never used.
"""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from onnx_explain.serve import schemas
from onnx_explain.serve.errors import bad_request
from onnx_explain.serve.render import overlay_png
from onnx_explain.serve.state import ServerState
from onnx_explain.serve.v1 import explain_key, methods_of, run_explain, targets_of, top_k_of

router = APIRouter(tags=["For people"])


def _target(text: str | None):
    if text is None or text.strip() in ("", "top1"):
        return None
    try:
        return int(text)
    except ValueError:
        raise bad_request("target must be \"top1\" or a class index") from None


@router.post(
    "/explain",
    summary="Explain an uploaded image (JSON, or the overlay PNG with Accept: image/png)",
    responses={
        200: {"description": "the explanation",
              "content": {"application/json": {"schema": schemas.V1_EXPLAIN_RESPONSE},
                          "image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **schemas.COMMON_ERRORS,
    },
)
async def explain_upload(
    request: Request,
    image: UploadFile = File(..., description="the image file (JPEG, PNG, BMP, TIFF, WebP)"),
    method: str = Form("gradcam", description="method, or several separated by commas"),
    target: str | None = Form(None, description="top1 (default) or a class index"),
    top_k: int = Form(5, description="classes in the prediction"),
    heatmap: bool = Form(False, description="include the full-resolution heatmap (JSON answer)"),
) -> Response:
    state: ServerState = request.app.state.server
    state.require_ready()
    methods = methods_of(state, [m.strip() for m in method.split(",") if m.strip()] or None)
    k = top_k_of(state, {"top_k": top_k})
    targets = targets_of(state, _target(target), 1)
    data = await image.read()
    async with state.decode_slots:
        loaded = await run_in_threadpool(state.decoder.decode, data, "image")
    want_png = "image/png" in request.headers.get("accept", "").lower()
    want = {"want_map": not want_png, "want_heatmap": heatmap and not want_png, "want_overlay": False}
    if want_png:
        results = [await state.submit(request, explain_key(methods[0], {}), 1, ([loaded], targets, k))]
        png = await run_in_threadpool(overlay_png, loaded, results[0][0])
        return Response(png, media_type="image/png")
    doc = await run_explain(state, request, [loaded], methods, targets, k, {m: {} for m in methods}, want)
    return JSONResponse(doc)
