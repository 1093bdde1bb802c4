"""Request bodies are bounded: over ``max_body_bytes`` a request gets 413 and the server
stops reading it.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read;
a chunked body is counted as it arrives and refused when it passes the limit.  A
compressed body (``Content-Encoding: gzip``/``deflate``, which the Triton client can send)
is bounded again after decompression by :func:`decompress`, so a small bomb cannot expand
into gigabytes.
"""

from __future__ import annotations

import json
import zlib
from typing import Callable

from onnx_explain.serve.errors import ApiError


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: the limit is {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _refuse(self, send: Callable, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await self._refuse(send, 413, f"request body too large: the limit is {self.max_bytes} bytes")
                    return
        received = 0
        limit = self.max_bytes

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` decoded per ``Content-Encoding`` (identity, gzip, deflate), at most ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise ApiError(415, f"unsupported Content-Encoding {enc[:32]!r}; use gzip, deflate or none")
    wbits = 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error:
        raise ApiError(400, f"request body is not valid {enc} data") from None
    if len(out) > limit or d.unconsumed_tail:
        raise BodyTooLarge(limit)
    if not d.eof:
        raise ApiError(400, f"request body is truncated {enc} data")
    return out
