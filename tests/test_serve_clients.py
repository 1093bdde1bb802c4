"""Unchanged clients against ``onnx-explain serve`` with the pretrained EfficientNet-Lite0:

* the official Open Inference Protocol client (``tritonclient[http]``) asks for a subset
  of the outputs as binary tensors; the values equal a direct ONNX Runtime run of the
  explain model;
* a KServe v1 ``:explain`` request with a base64 photo returns the class and the heatmap
  that ``onnx-explain explain`` writes for the same photo.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")

from serving import b64, config, running  # noqa: E402

NAME = "effl0"


@pytest.fixture(scope="module")
def effl0(tmp_path_factory):
    from onnx_explain.export import export_model

    path = tmp_path_factory.mktemp("serve-effl0") / "efficientnet_lite0.explain.onnx"
    export_model("efficientnet_lite0", path)
    return path


@pytest.fixture(scope="module")
def server(effl0):
    with running(config(effl0, name=NAME, threads=2)) as srv:
        yield srv


def test_triton_client_subset_of_outputs_binary(server, effl0):
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        meta = client.get_model_metadata(NAME)
        image_input = meta["inputs"][0]["name"]
        assert meta["inputs"][0]["shape"] == [-1, 3, 224, 224]
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        target = np.array([281, -1], dtype=np.int64)
        inputs = [httpclient.InferInput(image_input, list(x.shape), "FP32"),
                  httpclient.InferInput("target", [2], "INT64")]
        inputs[0].set_data_from_numpy(x, binary_data=True)
        inputs[1].set_data_from_numpy(target, binary_data=True)
        wanted = ["target_class", "score", "activations", "grad_activations"]
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in wanted]
        result = client.infer(NAME, inputs, outputs=outputs, request_id="t-1")
        response = result.get_response()
        assert response["id"] == "t-1"
        assert [o["name"] for o in response["outputs"]] == wanted
        assert all("binary_data_size" in o["parameters"] for o in response["outputs"])

        direct = ort.InferenceSession(str(effl0), providers=["CPUExecutionProvider"])
        names = [o.name for o in direct.get_outputs()]
        want = dict(zip(names, direct.run(names, {image_input: x, "target": target})))
        np.testing.assert_array_equal(result.as_numpy("target_class"), want["target_class"])
        assert result.as_numpy("target_class")[0] == 281
        for name in ("score", "activations", "grad_activations"):
            got = result.as_numpy(name)
            assert got.shape == want[name].shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-6)
        # what was computed: the pruned graph of these four outputs, no input gradient
        session = server.state.model.session._sessions[tuple(sorted(wanted))]
        assert {o.name for o in session.get_outputs()} == set(wanted)

        bad = httpclient.InferInput(image_input, [1, 3, 224, 200], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 224, 200), np.float32))
        with pytest.raises(InferenceServerException, match=r"shape \[1, 3, 224, 200\] does not match"):
            client.infer(NAME, [bad])
    finally:
        client.close()


def test_kserve_explain_with_photo_equals_the_cli(server, effl0, photos, tmp_path):
    chelsea = next(p for p in photos if p.stem == "chelsea")
    with server.client(timeout=60) as c:
        r = c.post(f"/v1/models/{NAME}:explain",
                   json={"instances": [{"b64": b64(chelsea)}], "parameters": {"method": "gradcam", "heatmap": True}})
    assert r.status_code == 200, r.text
    (e,) = r.json()["explanations"]
    assert (e["class"], e["label"]) == (285, "Egyptian cat")
    heat = np.frombuffer(base64.b64decode(e["heatmap"]["b64"]), "<f4").reshape(e["heatmap"]["shape"])

    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "onnx_explain.command.cli", "explain", str(effl0), str(chelsea),
                           "--out", str(out), "--device", "cpu", "--threads", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cli_heat = np.load(out / "chelsea.gradcam.npy")
    assert heat.shape == cli_heat.shape == (300, 451)
    np.testing.assert_allclose(heat, cli_heat, atol=1e-5)
    assert np.abs(heat - cli_heat).max() < 1e-5
    import json

    (record,) = json.loads(done.stdout)["results"]
    assert record["class"] == e["class"] and record["box"] == e["box"]
    assert abs(record["probability"] - e["probability"]) < 1e-5
