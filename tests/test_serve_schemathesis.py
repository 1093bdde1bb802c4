"""Property-based tests of ``onnx-explain serve`` against its own OpenAPI document
(what ``/openapi.json`` of the running server serves): schemathesis generates requests for every
operation, valid and invalid, and every answer must be no server error (no 5xx), carry a
documented status and content type, and match the documented schema.  Bounded: a few
examples per operation, on 127.0.0.1."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving import config, running  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def server(tiny):
    # a small queue: generated bursts must meet 503s that are documented, never 500s
    with running(config(tiny.explain, max_queue=16, timeout_s=30)) as srv:
        yield srv


def _document() -> dict:
    """The server's OpenAPI document, from the app itself (no model needed to describe it)."""
    from onnx_explain.serve.app import create_app
    from onnx_explain.serve.config import ServeConfig

    return create_app(ServeConfig(model="unused.onnx")).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case, server):
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)


def test_the_document_lists_the_protocols(server):
    import httpx

    served = httpx.get(server.url + "/openapi.json").json()
    assert served == DOCUMENT  # the document the property tests ran on is the one served
    paths = served["paths"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}", "/v2/models/{model_name}/ready",
                 "/v2/models/{model_name}/infer", "/v1/models/{model_name}:predict",
                 "/v1/models/{model_name}:explain", "/explain", "/metrics"):
        assert path in paths, path
    assert httpx.get(server.url + "/docs").status_code == 200
    # the property tests ran before this one, on this server: they really sent requests
    metrics = httpx.get(server.url + "/metrics").text
    sent = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("onnx_explain_requests_total{"))
    assert sent >= 100, sent
