"""Optional bearer token: when the server has one, every route but the health probes needs
``Authorization: Bearer <token>``.

The health probes stay open because load balancers and Kubernetes probe them without
credentials; they say nothing but "up" and "ready".  The token is compared in constant
time; a missing or wrong one gets 401 with ``WWW-Authenticate: Bearer`` and the protocol's
error object.
"""

from __future__ import annotations

import hmac
import json
from typing import Callable

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class BearerAuthMiddleware:
    def __init__(self, app: Callable, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self._expected = b"bearer " + token.encode("utf-8")
        self.open_paths = open_paths

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                given = scheme.lower() + b" " + credential.strip()
                return hmac.compare_digest(given, self._expected)
        return False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "unauthorized: this server needs 'Authorization: Bearer <token>'"}).encode()
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="onnx-explain"'),
            ],
        })
        await send({"type": "http.response.body", "body": body})
