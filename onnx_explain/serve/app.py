"""The ASGI application: routers, middlewares, life cycle.

Request path through the layers (outermost first): observability (metrics, access log,
``nosniff``) -> bearer token -> body limit -> FastAPI (routes, error handlers).  On
start the model loads and warms in a thread while the health probes already answer
(``/v2/health/ready`` is 503 until it is done); on shutdown the batcher finishes what
is queued and running before the workers stop.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from fastapi import FastAPI, Request, Response

from onnx_explain import __version__
from onnx_explain.serve import errors, schemas, upload, v1, v2
from onnx_explain.serve.auth import BearerAuthMiddleware
from onnx_explain.serve.config import ServeConfig
from onnx_explain.serve.limits import BodyLimitMiddleware
from onnx_explain.serve.metrics import CLIENT_CLOSED, CONTENT_TYPE_LATEST, ObservabilityMiddleware
from onnx_explain.serve.state import ClientGone, ServerState

DESCRIPTION = """\
Explanations (Grad-CAM and relatives) of an ONNX image classifier, over the protocols
model platforms speak: the Open Inference Protocol (KServe v2 / Triton, with the binary
tensor extension) and KServe v1 (`:predict`, `:explain`), plus `POST /explain` for a
plain file upload. Errors are `{"error": "<reason>"}`.
"""


def create_app(config: ServeConfig) -> FastAPI:
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="onnx-explain serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.server = state
    errors.install(app)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    app.include_router(v2.router)
    app.include_router(v1.router)
    app.include_router(upload.router)

    @app.get("/metrics", summary="Prometheus metrics", tags=["Operations"],
             responses={200: {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                        401: schemas.COMMON_ERRORS[401]})
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # add_middleware wraps: the last added is the outermost
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.token:
        app.add_middleware(BearerAuthMiddleware, token=config.token)
    app.add_middleware(ObservabilityMiddleware, metrics=state.metrics, log_requests=config.access_log)
    return app
