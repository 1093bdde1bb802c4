"""``onnx-explain serve`` under load and faults, on 127.0.0.1, bounded in count and time:
a full queue answers 503 + Retry-After (and never grows), a client that goes away takes
its work with it and harms nobody, the per-request timeout, readiness only once the
model is loaded and warmed, and SIGTERM: no new connections, in-flight requests
finished, exit 0."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("fastapi")

from serving import config, running, spawned, wait_ready  # noqa: E402


def _body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "logits"}]}


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def logits(tiny):
    session = ort.InferenceSession(str(tiny.explain), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x, "target": np.array([-1])})[0][0]


class Gate:
    """Holds the worker inside the model call until released; records what ran."""

    def __init__(self, batcher) -> None:
        self.event = threading.Event()
        self.ran: list[float] = []
        self._real = batcher._run
        batcher._run = self

    def __call__(self, key, payloads):
        assert self.event.wait(30), "gate never opened"
        self.ran.extend(float(p["input"].reshape(-1)[0]) for p in payloads)
        return self._real(key, payloads)


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_full_queue_answers_503_and_never_grows(tiny, logits):
    with running(config(tiny.explain, max_queue=2, max_batch_size=1, max_delay_ms=0, workers=1)) as srv:
        batcher = srv.state.batcher
        gate = Gate(batcher)
        xs = [_x(i) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            def post(x):
                with srv.client() as c:
                    return c.post("/v2/models/tiny/infer", json=_body(x))

            first = pool.submit(post, xs[0])
            _until(lambda: batcher.running == 1)
            queued = [pool.submit(post, x) for x in xs[1:3]]
            _until(lambda: batcher.depth == 2)
            burst = [pool.submit(post, x) for x in xs[3:]]
            refused = [f.result(20) for f in burst]
            assert batcher.depth == 2  # bounded: the burst never entered the queue
            gate.event.set()
            done = [first.result(20)] + [f.result(20) for f in queued]
        for r in refused:
            assert r.status_code == 503
            assert r.json()["error"].startswith("server busy: 2 images queued")
            assert int(r.headers["retry-after"]) >= 1
        for x, r in zip(xs, done):
            assert r.status_code == 200
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], logits(x), rtol=1e-5, atol=1e-6)
        with srv.client() as c:  # alive and well
            r = c.post("/v2/models/tiny/infer", json=_body(xs[5]))
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], logits(xs[5]), rtol=1e-5, atol=1e-6)
            assert 'onnx_explain_rejected_total{reason="queue_full"} 5.0' in c.get("/metrics").text


def test_client_disconnect_drops_its_work_and_harms_nobody(tiny, logits):
    with running(config(tiny.explain, max_batch_size=1, max_delay_ms=0, workers=1)) as srv:
        batcher = srv.state.batcher
        gate = Gate(batcher)
        a, b, c_ = _x(11), _x(12), _x(13)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            def post(x, timeout=30.0):
                with srv.client(timeout=timeout) as c:
                    return c.post("/v2/models/tiny/infer", json=_body(x))

            fa = pool.submit(post, a)
            _until(lambda: batcher.running == 1)
            fb = pool.submit(post, b, 0.5)  # gives up and closes its connection
            with pytest.raises(httpx.ReadTimeout):
                fb.result(20)
            _until(lambda: batcher.depth == 0)  # the server noticed and dropped b's work
            fc = pool.submit(post, c_)
            _until(lambda: batcher.depth == 1)
            gate.event.set()
            ra, rc = fa.result(20), fc.result(20)
        np.testing.assert_allclose(ra.json()["outputs"][0]["data"], logits(a), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rc.json()["outputs"][0]["data"], logits(c_), rtol=1e-5, atol=1e-6)
        assert gate.ran == [float(a.reshape(-1)[0]), float(c_.reshape(-1)[0])]  # b never ran
        with srv.client() as c:
            text = c.get("/metrics").text
        assert 'route="/v2/models/{model_name}/infer",status="499"} 1.0' in text


def test_request_timeout_504(tiny, logits):
    with running(config(tiny.explain, max_batch_size=1, max_delay_ms=0, timeout_s=0.5, workers=1)) as srv:
        gate = Gate(srv.state.batcher)
        with srv.client() as c:
            start = time.monotonic()
            r = c.post("/v2/models/tiny/infer", json=_body(_x(1)))
            assert r.status_code == 504 and r.json() == {"error": "no answer within 0.5 s (the request was dropped)"}
            assert time.monotonic() - start < 5
            body = {**_body(_x(2)), "parameters": {"timeout": 100_000}}  # the Triton client's, microseconds
            r = c.post("/v2/models/tiny/infer", json=body)
            assert r.status_code == 504 and "within 0.1 s" in r.json()["error"]
            gate.event.set()
            _until(lambda: srv.state.batcher.running == 0)
            x = _x(3)
            r = c.post("/v2/models/tiny/infer", json=_body(x))
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], logits(x), rtol=1e-5, atol=1e-6)


def test_not_ready_until_loaded_and_warmed(tiny, monkeypatch):
    from onnx_explain.serve.model import ServedModel

    warming = threading.Event()
    release = threading.Event()
    real_warm = ServedModel.warm

    def slow_warm(self):
        warming.set()
        assert release.wait(30)
        real_warm(self)

    monkeypatch.setattr(ServedModel, "warm", slow_warm)
    with running(config(tiny.explain), ready=False) as srv, srv.client() as c:
        assert warming.wait(30)
        assert c.get("/v2/health/live").json() == {"live": True}
        r = c.get("/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"ready": False})
        assert c.get("/v2/models/tiny/ready").status_code == 503
        r = c.post("/v2/models/tiny/infer", json=_body(_x(0)))
        assert (r.status_code, r.json()) == (503, {"error": "not ready: model is loading"})
        assert r.headers["retry-after"] == "1"
        release.set()
        wait_ready(srv.url)
        assert c.post("/v2/models/tiny/infer", json=_body(_x(0))).status_code == 200


def test_model_that_fails_to_load_is_never_ready(tiny):
    with running(config(tiny.plain), ready=False) as srv, srv.client() as c:
        _until(lambda: srv.state.model.load_error is not None)
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        r = c.post("/v2/models/tiny/infer", json=_body(_x(0)))
        assert r.status_code == 503 and "not an explain model" in r.json()["error"]


def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny, logits):
    with spawned(tiny.explain, "--name", "tiny", "--max-delay-ms", "1500", "--max-batch-size", "64",
                 "--threads", "1") as (proc, url):
        wait_ready(url, proc=proc)
        xs = [_x(40 + i) for i in range(6)]

        def post(x):
            with httpx.Client(base_url=url, timeout=30) as c:
                return c.post("/v2/models/tiny/infer", json=_body(x))

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, x) for x in xs]
            time.sleep(0.6)  # all six are in the server, waiting for their batch to fill
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                httpx.get(url + "/v2/health/live", timeout=2)
            answers = [f.result(30) for f in futures]
        assert proc.wait(30) == 0
        log = proc.stdout.read().decode()
    for x, r in zip(xs, answers):
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], logits(x), rtol=1e-5, atol=1e-6)
    assert log.count('"POST /v2/models/tiny/infer HTTP/1.1" 200') == 6 and "stopped" in log
