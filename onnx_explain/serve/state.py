"""What every route shares: the model, the batcher, the image decoder, the metrics, and
the one way a request waits for its result (bounded by the timeout, abandoned when the
client goes away).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Hashable

from fastapi import Request

from onnx_explain.errors import ExplainError
from onnx_explain.serve.batching import Batcher, QueueFull, ShuttingDown
from onnx_explain.serve.config import ServeConfig
from onnx_explain.serve.decode import ImageDecoder
from onnx_explain.serve.errors import ApiError, quoted
from onnx_explain.serve.metrics import Metrics
from onnx_explain.serve.model import ServedModel

log = logging.getLogger("onnx_explain.serve")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ServerState:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.model = ServedModel(config)
        self.decoder: ImageDecoder | None = None  # its scratch folder is made on start
        self.batcher = Batcher(
            self.model.run,
            max_batch_size=config.max_batch_size,
            max_delay_s=config.max_delay_ms / 1000.0,
            max_queue=config.max_queue,
            workers=config.workers,
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.watch_queue(lambda: self.batcher.depth)
        self._loader: threading.Thread | None = None
        # decoding is bounded too: at most this many uploads are held decoded outside the queue
        self.decode_slots = asyncio.Semaphore(max(2, 2 * config.workers))

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        self.decoder = ImageDecoder()
        await self.batcher.start()
        self._loader = threading.Thread(target=self._load, name="onnx-explain-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            self.model.load()
            log.info("model %r ready (%s, loaded and warmed in %.1f s)", self.model.name,
                     ", ".join(self.model.session.active_providers), self.model.load_seconds)
        except Exception as err:  # the server stays up and says why it is not ready
            self.model.load_error = str(err)
            log.error("model %r failed to load: %s", self.model.name, err)

    async def stop(self) -> None:
        await self.batcher.stop()
        self.model.close()
        if self.decoder is not None:
            self.decoder.close()

    # ------------------------------------------------------------------ checks
    def require_model(self, name: str, version: str | None = None) -> None:
        if name != self.model.name:
            raise ApiError(404, f"unknown model {quoted(name)}; this server serves {self.model.name!r}")
        if version is not None and version != "1":
            raise ApiError(404, f"unknown version {quoted(version)} of model {self.model.name!r}; it has version '1'")

    def require_ready(self) -> None:
        if not self.model.ready:
            reason = f"model failed to load: {self.model.load_error}" if self.model.load_error else \
                "model is loading"
            raise ApiError(503, f"not ready: {reason}", {"Retry-After": "1" if not self.model.load_error else "60"})

    # ------------------------------------------------------------------ work
    async def submit(self, request: Request, key: Hashable, rows: int, payload: Any,
                     timeout_s: float | None = None) -> Any:
        """Queue work and wait for its result; 503 when the queue is full, 504 after the
        timeout; a client that disconnects meanwhile takes its work out of the queue."""
        timeout = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        work = asyncio.ensure_future(self.batcher.submit(key, rows, payload))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            gone.cancel()
        if work in done:
            try:
                return work.result()
            except QueueFull as full:
                self.metrics.rejected.labels("queue_full").inc()
                raise ApiError(503, str(full), {"Retry-After": str(full.retry_after)}) from None
            except ShuttingDown as err:
                raise ApiError(503, str(err), {"Retry-After": "5"}) from None
            except ApiError:
                raise
            except (ExplainError, ValueError) as err:
                raise ApiError(400, str(err)) from None
            except MemoryError:
                raise ApiError(503, "out of memory for this request; try fewer or smaller images",
                               {"Retry-After": "5"}) from None
        work.cancel()
        if gone in done:
            request.scope["onnx_explain.disconnected"] = True
            raise ClientGone()
        self.metrics.rejected.labels("timeout").inc()
        raise ApiError(504, f"no answer within {timeout:g} s (the request was dropped)")
