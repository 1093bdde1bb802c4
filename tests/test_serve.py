"""``onnx-explain serve`` on the tiny model: the protocols' routes and answers, the values
against a direct ONNX Runtime run, every refusal's status and error object, the token,
the body limit, metrics, the access log and batching across requests."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import re

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("fastapi")

from onnx_explain.explainer import Explainer  # noqa: E402
from serving import b64, config, running  # noqa: E402

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(tiny):
    with running(config(tiny.explain)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def direct(tiny):
    """The whole explain model in plain ONNX Runtime: every output for given feeds."""
    session = ort.InferenceSession(str(tiny.explain), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {"input": x, "target": target})))

    return run


@pytest.fixture(scope="module")
def photo_png(photos) -> bytes:
    img = cv2.imread(str(photos[0]))
    ok, data = cv2.imencode(".png", cv2.resize(img, (96, 64), interpolation=cv2.INTER_AREA))
    assert ok
    return data.tobytes()


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _json_input(x: np.ndarray, name: str = "input") -> dict:
    return {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]
    return doc["error"]


# ---------------------------------------------------------------------------- health, metadata
def test_health_and_metadata(client, tiny):
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True})
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
        {"name": "target", "datatype": "INT64", "shape": [-1]},
    ]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["logits"] == ("FP32", [-1, tiny.classes])
    assert outputs["target_class"] == ("INT64", [-1])
    assert outputs["activations"] == ("FP32", [-1, 12, 16, 16])
    assert outputs["grad_input"] == ("FP32", [-1, 3, 32, 32])
    assert client.get("/v2/models/tiny/versions/1").json() == meta
    assert client.get("/v1/models").json() == {"models": ["tiny"]}
    assert client.get("/v1/models/tiny").json() == {"name": "tiny", "ready": True}


def test_unknown_model_version_and_route(client):
    assert "unknown model 'nope'" in _error(client.get("/v2/models/nope"), 404)
    assert "unknown model" in _error(client.post("/v2/models/nope/infer", json={}), 404)
    assert "unknown version '7'" in _error(client.get("/v2/models/tiny/versions/7/ready"), 404)
    assert _error(client.get("/no/such/route"), 404) == "not found"
    assert _error(client.delete("/v2/health/live"), 405) == "method not allowed"


# ---------------------------------------------------------------------------- v2 infer
def test_infer_json_subset_equals_direct_run_and_computes_only_that(server, client, direct):
    x = _x(2)
    target = np.array([1, -1], dtype=np.int64)
    body = {
        "id": "req-1",
        "inputs": [_json_input(x), {"name": "target", "datatype": "INT64", "shape": [2], "data": target.tolist()}],
        "outputs": [{"name": "activations"}, {"name": "grad_activations"}, {"name": "target_class"}],
    }
    r = client.post("/v2/models/tiny/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-1" and doc["model_name"] == "tiny"
    assert [o["name"] for o in doc["outputs"]] == ["activations", "grad_activations", "target_class"]
    want = direct(x, target)
    for o in doc["outputs"]:
        got = np.asarray(o["data"], dtype=np.float32 if o["datatype"] == "FP32" else np.int64).reshape(o["shape"])
        assert list(got.shape) == list(want[o["name"]].shape)
        np.testing.assert_allclose(got, want[o["name"]], rtol=1e-5, atol=1e-6)
    assert doc["outputs"][2]["data"][0] == 1  # the asked class
    # only what was asked was computed: the session that ran is pruned to these outputs
    sessions = server.state.model.session._sessions
    key = ("activations", "grad_activations", "target_class")
    assert key in sessions
    ran = {n.name for n in sessions[key].get_outputs()}
    assert ran == set(key)


def test_infer_binary_inputs_and_outputs(client, direct):
    x = _x(3, seed=1)
    target = np.array([0, 3, -1], dtype=np.int64)
    head = json.dumps({
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [3, 3, 32, 32], "parameters": {"binary_data_size": x.nbytes}},
            {"name": "target", "datatype": "INT64", "shape": [3], "parameters": {"binary_data_size": target.nbytes}},
        ],
        "outputs": [{"name": "score", "parameters": {"binary_data": True}}, {"name": "logits"}],
    }).encode()
    r = client.post("/v2/models/tiny/infer", content=head + x.tobytes() + target.tobytes(),
                    headers={HEADER: str(len(head)), "content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers[HEADER])
    doc = json.loads(r.content[:n])
    score, logits = doc["outputs"]
    assert score["parameters"] == {"binary_data_size": 12} and "data" not in score
    got_score = np.frombuffer(r.content[n:], dtype="<f4")
    assert len(r.content) == n + 12
    want = direct(x, target)
    np.testing.assert_allclose(got_score, want["score"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(logits["data"]).reshape(3, -1), want["logits"], rtol=1e-6)
    # binary_data_output: every output binary, in the order asked
    head2 = json.dumps({"parameters": {"binary_data_output": True},
                        "inputs": [_json_input(x)], "outputs": [{"name": "target_class"}, {"name": "score"}]}).encode()
    r = client.post("/v2/models/tiny/infer", content=head2)
    n = int(r.headers[HEADER])
    doc = json.loads(r.content[:n])
    assert [o["parameters"]["binary_data_size"] for o in doc["outputs"]] == [24, 12]
    np.testing.assert_array_equal(np.frombuffer(r.content[n : n + 24], "<i8"), want["logits"].argmax(1))


def test_infer_without_outputs_returns_all(client, direct, tiny):
    x = _x(1, seed=2)
    r = client.post("/v2/models/tiny/infer", json={"inputs": [_json_input(x)]})
    assert r.status_code == 200
    names = [o["name"] for o in r.json()["outputs"]]
    assert names == list(direct(x, np.array([-1])).keys())


@pytest.mark.parametrize("mutate, status, needle", [
    (lambda b: b["inputs"][0].update(datatype="FP64"), 400, "datatype 'FP64' does not match the model's FP32"),
    (lambda b: b["inputs"][0].update(datatype="STRING"), 400, "unsupported datatype 'STRING'"),
    (lambda b: b["inputs"][0].update(shape=[1, 3, 16, 64]), 400, "shape [1, 3, 16, 64] does not match"),
    (lambda b: b["inputs"][0].update(shape=[1, 3, 32]), 400, "'data' has 3072 elements, shape [1, 3, 32] needs 96"),
    (lambda b: b["inputs"][0].update(data=["a"] * 3072), 400, "must hold numbers"),
    (lambda b: b.update(outputs=[{"name": "heatmap"}]), 400, "unknown output 'heatmap'"),
    (lambda b: b["inputs"].append({"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0]}), 400,
     "unknown input 'pixels'"),
    (lambda b: b["inputs"].append({"name": "target", "datatype": "INT64", "shape": [1], "data": [4]}), 400,
     "class 4 out of range: the model has 4 classes"),
    (lambda b: b["inputs"].append({"name": "target", "datatype": "INT64", "shape": [1], "data": [1.5]}), 400,
     "must hold integers"),
    (lambda b: b["inputs"].append({"name": "target", "datatype": "INT64", "shape": [2], "data": [1, 1]}), 400,
     "batch 2 differs"),
    (lambda b: b.update(inputs=[]), 400, "'inputs' must be a non-empty list"),
    (lambda b: b["outputs"][0].update(parameters={"classification": 3}), 400, "classification extension"),
])
def test_infer_refusals(client, mutate, status, needle):
    body = {"inputs": [_json_input(_x(1))], "outputs": [{"name": "score"}]}
    mutate(body)
    assert needle in _error(client.post("/v2/models/tiny/infer", json=body), status)


def test_infer_malformed_bodies(client):
    assert _error(client.post("/v2/models/tiny/infer", content=b"{not json"), 400) == \
        "the inference request is not valid JSON"
    nan = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [NaN]}]}'
    assert "not valid JSON" in _error(client.post("/v2/models/tiny/infer", content=nan), 400)
    huge = json.dumps({"inputs": [{**_json_input(_x(1)), "data": [1e39] * 3072}]})
    assert "holds NaN or infinity" in _error(client.post("/v2/models/tiny/infer", content=huge), 400)
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "parameters": {"binary_data_size": 100}}]}).encode()
    r = client.post("/v2/models/tiny/infer", content=head + b"\0" * 100, headers={HEADER: str(len(head))})
    assert "binary_data_size 100 does not match shape [1, 3, 32, 32] of FP32 (12288 bytes)" in _error(r, 400)
    r = client.post("/v2/models/tiny/infer", content=head, headers={HEADER: str(len(head) + 5)})
    assert HEADER in _error(r, 400)
    extra = json.dumps({"inputs": [_json_input(_x(1))]}).encode()
    r = client.post("/v2/models/tiny/infer", content=extra + b"\1\2", headers={HEADER: str(len(extra))})
    assert "2 binary bytes that no input declares" in _error(r, 400)


def test_worker_survives_bad_requests(client, direct):
    for _ in range(3):
        _error(client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input"}]}), 400)
    x = _x(1, seed=9)
    r = client.post("/v2/models/tiny/infer", json={"inputs": [_json_input(x)], "outputs": [{"name": "logits"}]})
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]), direct(x, np.array([-1]))["logits"][0],
                               rtol=1e-6)


# ---------------------------------------------------------------------------- KServe v1, upload
def test_v1_predict_and_explain_equal_the_explainer(client, tiny, photo_png):
    with Explainer(tiny.explain, device="cpu", threads=1) as ex:
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(photo_png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        (want,) = ex.explain([image], method="gradcam", top_k=3)
        (want_p,) = ex.predict([image], top_k=3)
    r = client.post("/v1/models/tiny:predict", json={"instances": [{"b64": b64(photo_png)}], "parameters": {"top_k": 3}})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["classes"] == want_p.classes and p["labels"] == want_p.labels
    np.testing.assert_allclose(p["probabilities"], want_p.probabilities, rtol=1e-6)

    r = client.post("/v1/models/tiny:explain", json={
        "instances": [{"b64": b64(photo_png)}, {"b64": b64(photo_png)}],
        "parameters": {"method": "gradcam", "target": [None, 1], "heatmap": True, "overlay": True, "top_k": 3}})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [len(doc["predictions"]), len(doc["explanations"])] == [2, 2]
    e0, e1 = doc["explanations"]
    assert (e0["instance"], e0["class"], e0["label"]) == (0, want.target_class, want.label)
    assert (e1["instance"], e1["class"]) == (1, 1)
    assert e0["box"] == [round(v, 2) for v in want.box]
    np.testing.assert_allclose(e0["probability"], want.probability, rtol=1e-6)
    heat = e0["heatmap"]
    assert heat["shape"] == [64, 96] and heat["datatype"] == "FP32"
    got = np.frombuffer(base64.b64decode(heat["b64"]), "<f4").reshape(heat["shape"])
    np.testing.assert_allclose(got, want.heatmap, atol=1e-6)
    assert np.asarray(e0["map"]).shape == want.raw_map.shape
    png = cv2.imdecode(np.frombuffer(base64.b64decode(e0["overlay"]["b64"]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (64, 96, 3)


def test_v1_several_methods_and_options(client, photo_png):
    r = client.post("/v1/models/tiny:explain", json={
        "instances": [{"b64": b64(photo_png)}],
        "parameters": {"method": ["gradcam", "smoothgrad"], "options": {"smoothgrad": {"n_samples": 4}},
                       "map": False}})
    assert r.status_code == 200, r.text
    ex = r.json()["explanations"]
    assert [e["method"] for e in ex] == ["gradcam", "smoothgrad"] and "map" not in ex[0]


@pytest.mark.parametrize("body, needle", [
    ({"instances": [{"b64": "not base64!"}]}, "instance 0: 'b64' is not valid base64"),
    ({"instances": [{"b64": base64.b64encode(b"hello, world").decode()}]}, "instance 0: not an image"),
    ({"instances": [{"path": "/etc/passwd"}]}, "never named by path or URL"),
    ({"instances": ["/etc/passwd"]}, "never named by path or URL"),
    ({"instances": [{"b64": "", "url": "file:///etc/passwd"}]}, "never named by path or URL"),
    ({"instances": []}, "'instances' must be a non-empty list"),
    ({"instances": [{"b64": "AAAA"}], "parameters": {"target": 4}}, "target class 4 out of range"),
    ({"instances": [{"b64": "AAAA"}], "parameters": {"target": -2}}, "target class -2 out of range"),
    ({"instances": [{"b64": "AAAA"}], "parameters": {"method": "lime"}}, "unknown method 'lime'"),
    ({"instances": [{"b64": "AAAA"}], "parameters": {"method": "smoothgrad", "options": {"n_samples": 10**6}}},
     "option 'n_samples' must be in 1..128"),
    ({"instances": [{"b64": "AAAA"}], "parameters": {"options": {"model_path": "/tmp/x.onnx"}}},
     "takes no option 'model_path'"),
    ({"instances": [{"b64": "AAAA"}], "parameters": {"top_k": 0}}, "top_k must be a positive integer"),
])
def test_v1_refusals_and_no_files(client, body, needle):
    r = client.post("/v1/models/tiny:explain", json=body)
    message = _error(r, 400)
    assert needle in message
    assert "root:" not in r.text


def test_upload_json_png_and_bad_image(client, photo_png):
    r = client.post("/explain", files={"image": ("../../../etc/passwd", photo_png, "image/png")},
                    data={"method": "gradcam", "target": "top1"})
    assert r.status_code == 200, r.text
    (e,) = r.json()["explanations"]
    assert e["method"] == "gradcam" and "passwd" not in r.text
    r = client.post("/explain", files={"image": ("cat.png", photo_png)}, headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (64, 96, 3)
    r = client.post("/explain", files={"image": ("x.png", b"<html><script>alert(1)</script></html>")})
    assert "image: not an image: the file holds text" in _error(r, 400)
    assert r.headers["x-content-type-options"] == "nosniff" and "<script>" not in r.text
    assert "invalid request" in _error(client.post("/explain", data={"method": "gradcam"}), 400)


# ---------------------------------------------------------------------------- limits, token
def test_body_limit_413(tiny):
    with running(config(tiny.explain, max_body_bytes=4096, max_images_per_request=2)) as srv, srv.client() as c:
        r = c.post("/v1/models/tiny:predict", json={"instances": [{"b64": "AAAA"}] * 3})
        assert _error(r, 413) == "3 instances: this server takes at most 2 per request"
        x = _x(1)
        r = c.post("/v2/models/tiny/infer", json={"inputs": [_json_input(x)]})
        assert "request body too large: the limit is 4096 bytes" in _error(r, 413)

        def chunks():
            for _ in range(10):
                yield b" " * 1000
        assert "too large" in _error(c.post("/v2/models/tiny/infer", content=chunks()), 413)
        small = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                             "parameters": {"binary_data_size": 12288}}]}
        head = json.dumps(small).encode()
        import gzip
        r = c.post("/v2/models/tiny/infer", content=gzip.compress(head + bytes(12288)),
                   headers={HEADER: str(len(head)), "content-encoding": "gzip"})
        assert "too large" in _error(r, 413)  # bounded after decompression as well
        assert c.get("/v2/health/ready").status_code == 200


def test_bearer_token(tiny, monkeypatch):
    token = "s3cret-t0ken"
    with running(config(tiny.explain, token=token)) as srv, srv.client() as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        for path in ("/v2/models/tiny", "/v2/models/tiny/ready", "/metrics", "/docs", "/openapi.json", "/v1/models"):
            r = c.get(path)
            assert "unauthorized" in _error(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert _error(c.get(path, headers={"Authorization": "Bearer wrong-token"}), 401)
            assert c.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        r = c.post("/v2/models/tiny/infer", json={"inputs": [_json_input(_x(1))]})
        assert r.status_code == 401


def test_default_host_is_loopback(tiny):
    from onnx_explain.serve.config import ServeConfig

    assert ServeConfig(model=tiny.explain).host == "127.0.0.1"
    with pytest.raises(ValueError, match="name must be"):
        ServeConfig(model=tiny.explain, name="../x")


# ---------------------------------------------------------------------------- observability
def test_metrics_and_access_log(tiny, caplog):
    with running(config(tiny.explain, access_log=True)) as srv, srv.client() as c:
        with caplog.at_level(logging.INFO, logger="onnx_explain.serve.access"):
            caplog.clear()
            c.post("/v2/models/tiny/infer", json={"inputs": [_json_input(_x(1))], "outputs": [{"name": "score"}]})
            c.post("/v2/models/tiny/infer", json={"inputs": []})
            c.get("/v2/health/live?token=zzz")
        lines = [r.getMessage() for r in caplog.records if r.name == "onnx_explain.serve.access"]
        assert len(lines) == 3
        assert re.fullmatch(r'127\.0\.0\.1:\d+ "POST /v2/models/tiny/infer HTTP/1\.1" 200 \d+ [\d.]+ms', lines[0])
        assert '" 400 ' in lines[1] and "zzz" not in lines[2]
        text = c.get("/metrics").text
    assert 'onnx_explain_requests_total{method="POST",route="/v2/models/{model_name}/infer",status="200"} 1.0' in text
    assert 'onnx_explain_requests_total{method="POST",route="/v2/models/{model_name}/infer",status="400"} 1.0' in text
    assert 'onnx_explain_request_duration_seconds_count{route="/v2/models/{model_name}/infer"} 2.0' in text
    # warming runs outside the batcher: exactly the one request's batch
    assert "onnx_explain_batch_size_count 1.0" in text and "onnx_explain_batch_size_sum 1.0" in text
    assert "onnx_explain_queue_depth 0.0" in text


def test_concurrent_requests_are_batched_and_kept_apart(tiny, direct):
    with running(config(tiny.explain, max_batch_size=8, max_delay_ms=300)) as srv:
        xs = [_x(1, seed=100 + i) for i in range(4)]

        def call(x):
            with srv.client() as c:
                return c.post("/v2/models/tiny/infer", json={"inputs": [_json_input(x)], "outputs": [{"name": "logits"}]})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(call, xs))
        for x, r in zip(xs, answers):
            assert r.status_code == 200
            np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]),
                                       direct(x, np.array([-1]))["logits"][0], rtol=1e-5, atol=1e-6)
        text = httpx.get(srv.url + "/metrics").text
    count = float(re.search(r"onnx_explain_batch_size_count (\S+)", text).group(1))
    total = float(re.search(r"onnx_explain_batch_size_sum (\S+)", text).group(1))
    assert total == 4.0 and count < 4.0  # gathered: fewer model calls than requests


def test_multi_pass_method_batched_across_requests(tiny, photo_png):
    """Integrated Gradients (many passes) from concurrent requests shares model calls and
    gives each the Explainer's answer; SmoothGrad (random noise) runs per request, so its
    answer never depends on who else was asking."""
    with Explainer(tiny.explain, device="cpu", threads=1) as ex:
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(photo_png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        want = {m: ex.explain([image], method=m, **opts)[0].heatmap.reshape(-1)
                for m, opts in (("integrated_gradients", {"n_steps": 4}), ("smoothgrad", {"n_samples": 3}))}
    for method, options, batched in (("integrated_gradients", {"n_steps": 4}, True),
                                     ("smoothgrad", {"n_samples": 3}, False)):
        with running(config(tiny.explain, max_batch_size=8, max_delay_ms=300)) as srv:
            body = {"instances": [{"b64": b64(photo_png)}],
                    "parameters": {"method": method, "options": options, "heatmap": True}}

            def call(_):
                with srv.client() as c:
                    return c.post("/v1/models/tiny:explain", json=body)

            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(call, range(3)))
            text = httpx.get(srv.url + "/metrics").text
        for r in answers:
            heat = r.json()["explanations"][0]["heatmap"]["b64"]
            np.testing.assert_allclose(np.frombuffer(base64.b64decode(heat), "<f4"), want[method], atol=1e-5)
        count = float(re.search(r"onnx_explain_batch_size_count (\S+)", text).group(1))
        assert (count < 3.0) if batched else (count == 3.0), (method, count)
