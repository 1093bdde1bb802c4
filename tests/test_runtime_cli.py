"""The runtime API (Explainer) and the command line, checked with numbers.

The model is conftest's ``tiny`` explain model (32x32 input, 4 classes, feature map 16x16);
images are scikit-image's photos at their own sizes (300x451, 400x600, 512x512).  The
independent reference for probabilities is the *plain* ONNX model run directly in ONNX
Runtime on an input preprocessed by hand with OpenCV, and a numpy softmax.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_explain import contract
from onnx_explain.command.cli import main
from onnx_explain.explainer import Explainer
from onnx_explain.images import load_image
from onnx_explain.methods import create, normalize01, resize_bilinear
from onnx_explain.session import ExplainSession

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
TOP_FIELDS = {"model", "methods", "target", "providers", "images", "failed", "seconds", "results", "errors"}
RESULT_FIELDS = {"file", "method", "class", "label", "probability", "score", "box", "top_k", "seconds", "outputs"}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def by_hand(paths, size):
    """Stretch to size x size (INTER_AREA: every photo is larger), scale, ImageNet mean/std."""
    out = []
    for p in paths:
        rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        out.append(((small / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return np.asarray(out, np.float32)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def reference(tiny, photos):
    """Logits and probabilities of the plain model, without any onnx_explain code."""
    s = ort.InferenceSession(str(tiny.plain), providers=["CPUExecutionProvider"])
    x = by_hand(photos, tiny.size)
    logits = s.run(None, {s.get_inputs()[0].name: x})[0]
    return x, logits, softmax(logits)


# ----------------------------------------------------------------------------- Explainer


def test_explain_heatmaps_probabilities_boxes(tiny, photos, reference):
    _, logits, probs = reference
    with Explainer(tiny.explain, device="cpu") as ex:
        results = ex.explain(photos, method="gradcam")
    top1 = logits.argmax(1)
    assert [e.target_class for e in results] == top1.tolist()
    for i, (e, p) in enumerate(zip(results, photos)):
        h0, w0 = cv2.imread(str(p)).shape[:2]
        assert e.path == str(p) and e.method == "gradcam"
        assert e.heatmap.shape == (h0, w0) and e.heatmap.dtype == np.float32
        assert e.heatmap.min() >= 0.0 and e.heatmap.max() <= 1.0 and e.heatmap.max() > 0.9
        assert not np.isnan(e.heatmap).any()
        assert e.raw_map.shape == (tiny.size // 2, tiny.size // 2)  # feature-map resolution
        # the heatmap is the normalised raw map brought to the photo's grid
        up = cv2.resize(normalize01(e.raw_map), (w0, h0), interpolation=cv2.INTER_LINEAR)
        assert np.abs(up - e.heatmap).max() < 0.02 and pearson(up, e.heatmap) > 0.999
        assert e.label == tiny.labels[e.target_class]
        np.testing.assert_allclose(e.probability, probs[i, e.target_class], rtol=1e-5)
        np.testing.assert_allclose(e.score, logits[i, e.target_class], rtol=1e-5, atol=1e-6)
        x0, y0, x1, y1 = e.box
        assert 0 <= x0 < x1 <= w0 and 0 <= y0 < y1 <= h0
        # the box holds the map's peak
        py, px = np.unravel_index(np.argmax(e.heatmap), e.heatmap.shape)
        assert x0 <= px < x1 and y0 <= py < y1
        assert e.top_k.classes[0] == top1[i]
        js = json.loads(json.dumps(e.to_json()))
        assert js["class"] == e.target_class and js["file"] == str(p)


def test_predict_top_k_is_sorted_numpy_softmax(tiny, photos, reference):
    _, _, probs = reference
    with Explainer(tiny.explain, device="cpu") as ex:
        preds = ex.predict(photos, top_k=3)
        everything = ex.predict(photos[:1], top_k=10)
    assert len(everything[0].classes) == tiny.classes  # k larger than the classes: all of them
    assert abs(sum(everything[0].probabilities) - 1.0) < 1e-5
    for pred, p, ref in zip(preds, photos, probs):
        assert pred.path == str(p)
        assert pred.classes == np.argsort(-ref)[:3].tolist()
        assert pred.probabilities == sorted(pred.probabilities, reverse=True)
        np.testing.assert_allclose(pred.probabilities, ref[pred.classes], rtol=1e-5)
        assert pred.labels == [tiny.labels[c] for c in pred.classes]


def test_target_per_image(tiny, photos, reference):
    _, logits, probs = reference
    targets = [3, 0, 1]
    with Explainer(tiny.explain, device="cpu") as ex:
        together = ex.explain(photos, method="hirescam", target=targets, batch_size=2)
        alone = [ex.explain([p], method="hirescam", target=t)[0] for p, t in zip(photos, targets)]
        same = ex.explain(photos, method="gradcam", target=2)
        with pytest.raises(ValueError, match="2 targets for 3 images"):
            ex.explain(photos, target=[1, 2])
    assert [e.target_class for e in together] == targets
    assert [e.target_class for e in same] == [2, 2, 2]
    for i, (a, b) in enumerate(zip(together, alone)):
        np.testing.assert_allclose(a.raw_map, b.raw_map, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a.probability, probs[i, targets[i]], rtol=1e-5)
        np.testing.assert_allclose(a.score, logits[i, targets[i]], rtol=1e-5, atol=1e-6)
    # another class gives another map
    assert not np.allclose(same[0].raw_map, together[0].raw_map)


def test_arrays_and_loaded_images_are_inputs(tiny, photos):
    with Explainer(tiny.explain, device="cpu") as ex:
        im = load_image(photos[0])
        a = ex.explain([im], method="gradcam")[0]
        b = ex.explain([im.rgb], method="gradcam")[0]
    assert b.path is None and a.path == str(photos[0])
    np.testing.assert_array_equal(a.heatmap, b.heatmap)


def test_context_manager_releases_sessions(tiny, photos):
    ex = Explainer(tiny.explain, device="cpu")
    with ex as entered:
        assert entered is ex
        ex.predict(photos[:1])
        assert ex.session._sessions  # built on demand
        assert ex.session.active_providers == ["CPUExecutionProvider"]
    assert not ex.session._sessions  # released on exit
    with pytest.raises(RuntimeError):
        with Explainer(tiny.explain, device="cpu") as ex2:
            ex2.predict(photos[:1])
            raise RuntimeError("boom")
    assert not ex2.session._sessions  # released on an exception too


def test_in_graph_gradcam_equals_runtime_gradcam(tiny, photos, reference):
    """The model's own ``gradcam`` output vs the runtime's gradcam method (numpy)."""
    x, _, _ = reference
    s = ExplainSession(tiny.explain, device="cpu")
    target = np.array([-1, 1, 3])
    graph = s(x, target, [contract.GRADCAM, contract.TARGET_CLASS])
    res = create("gradcam", s).attribute(x, target)
    np.testing.assert_array_equal(graph[contract.TARGET_CLASS], res.target_class)
    g = graph[contract.GRADCAM]
    assert g.shape == (3, tiny.size, tiny.size)
    assert np.all(g >= 0) and np.all(g <= 1)
    # the graph min-max normalises the raw map, then resizes it (bilinear, half-pixel): what
    # explain() does, so that a consumer without Python gets the same heatmap
    ours = resize_bilinear(normalize01(res.maps), (tiny.size, tiny.size))
    np.testing.assert_allclose(g, ours, atol=1e-5)
    # the other order (resize, then normalise) is the same map up to interpolation
    other = normalize01(resize_bilinear(res.maps, (tiny.size, tiny.size)))
    for i in range(3):
        assert pearson(g[i], other[i]) > 0.999


# ----------------------------------------------------------------------------- CLI explain


@pytest.fixture()
def photo_dir(tmp_path, photos):
    d = tmp_path / "photos"
    d.mkdir()
    for p in photos:
        shutil.copy(p, d / p.name)
    return d


def test_cli_explain_directory(tiny, photos, photo_dir, tmp_path, reference):
    _, _, probs = reference
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, photo_dir, "-m", "gradcam,saliency", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    names = sorted(f.name for f in out.iterdir())
    expected = sorted([f"{p.stem}.{m}.{ext}" for p in photos for m in ("gradcam", "saliency") for ext in ("png", "npy")]
                      + ["report.json"])
    assert names == expected  # nothing else: no temporary files left behind
    doc = json.loads((out / "report.json").read_text())
    assert TOP_FIELDS <= set(doc)
    assert doc["methods"] == ["gradcam", "saliency"] and doc["target"] == "top1"
    assert doc["images"] == 3 and doc["failed"] == 0 and doc["errors"] == []
    assert doc["providers"] == ["CPUExecutionProvider"] and doc["model"] == str(tiny.explain)
    assert len(doc["results"]) == 6
    with Explainer(tiny.explain, device="cpu") as ex:
        api = {m: ex.explain([photo_dir / p.name for p in photos], method=m) for m in ("gradcam", "saliency")}
    for rec in doc["results"]:
        assert RESULT_FIELDS <= set(rec)
        i = [p.name for p in photos].index(Path(rec["file"]).name)
        h0, w0 = cv2.imread(str(photos[i])).shape[:2]
        heat = np.load(rec["outputs"]["heatmap"])
        assert heat.shape == (h0, w0) and heat.min() >= 0 and heat.max() <= 1 and not np.isnan(heat).any()
        np.testing.assert_array_equal(heat, api[rec["method"]][i].heatmap)
        png = cv2.imread(rec["outputs"]["overlay"])
        assert png.shape == (h0, w0, 3)
        assert rec["class"] == int(np.argmax(probs[i])) and rec["label"] == tiny.labels[rec["class"]]
        np.testing.assert_allclose(rec["probability"], probs[i, rec["class"]], rtol=1e-5)
        x0, y0, x1, y1 = rec["box"]
        assert 0 <= x0 < x1 <= w0 and 0 <= y0 < y1 <= h0
        assert [t["class"] for t in rec["top_k"]] == np.argsort(-probs[i]).tolist()
    # the saliency map lives at input resolution, the gradcam map at feature resolution:
    # different maps, both explained
    assert not np.array_equal(api["gradcam"][0].heatmap, api["saliency"][0].heatmap)


def test_cli_explain_json_and_target(tiny, photos, tmp_path, reference):
    _, _, probs = reference
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, photos[1], "--target", "3", "--out", out, "--json", "--no-npy",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout is exactly the JSON document
    assert TOP_FIELDS <= set(doc) and doc["target"] == 3
    (rec,) = doc["results"]
    assert rec["class"] == 3 and rec["label"] == tiny.labels[3]
    np.testing.assert_allclose(rec["probability"], probs[1, 3], rtol=1e-5)
    assert sorted(f.name for f in out.iterdir()) == [f"{photos[1].stem}.gradcam.png", "report.json"]
    assert json.loads((out / "report.json").read_text())["results"] == doc["results"]


def test_cli_score_json(tiny, photos, reference):
    _, _, probs = reference
    r = invoke("score", tiny.explain, *photos, "--top-k", "2", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["errors"] == [] and len(doc["results"]) == 3
    for res, p, ref in zip(doc["results"], photos, probs):
        assert res["file"] == str(p)
        top = res["top_k"]
        assert [t["class"] for t in top] == np.argsort(-ref)[:2].tolist()
        assert [t["label"] for t in top] == [tiny.labels[t["class"]] for t in top]
        np.testing.assert_allclose([t["probability"] for t in top], ref[[t["class"] for t in top]], atol=2e-6)
    text = invoke("score", tiny.explain, photos[0], "--top-k", "1", "--device", "cpu")
    assert text.exit_code == 0 and text.stdout.startswith(f"{photos[0]}: {tiny.labels[int(np.argmax(probs[0]))]} (")


def test_cli_inspect_plain_and_explain(tiny):
    r = invoke("inspect", tiny.plain)
    assert r.exit_code == 0, r.output
    assert "plain ONNX model" in r.stdout and "candidate target layers" in r.stdout
    assert f"augment {tiny.plain}" in r.stdout
    info = json.loads(invoke("inspect", tiny.plain, "--json").stdout)
    assert info["explain_model"] is False and info["classes"] == tiny.classes
    layers = info["candidate_layers"]
    assert layers and info["default_layer"] in [c["name"] for c in layers]
    default = next(c for c in layers if c["name"] == info["default_layer"])
    assert (default["channels"], default["height"], default["width"]) == (12, 16, 16)
    assert info["default_layer"] == layers[-1]["name"]  # the last stage, not bypassed

    r = invoke("inspect", tiny.explain)
    assert r.exit_code == 0, r.output
    assert "explain model" in r.stdout and "target layer:" in r.stdout
    for name in ("target", "target_class", "score", "activations", "grad_activations", "grad_input",
                 "guided_grad_input", "gradcam"):
        assert f" {name} " in r.stdout, name
    info = json.loads(invoke("inspect", tiny.explain, "--json").stdout)
    assert info["explain_model"] is True and info["target_layer"] == default["name"]
    assert [i["name"] for i in info["inputs"]] == ["input", "target"]
    assert [o["name"] for o in info["outputs"]] == ["logits", "target_class", "score", "activations",
                                                    "grad_activations", "grad_input", "guided_grad_input",
                                                    "gradcam"]
    assert info["score"] == "logit" and info["labels"] == tiny.classes
    assert info["preprocess"]["size"] == [tiny.size, tiny.size] and info["cam_head"] is not None


def test_cli_augment_then_explain(tiny, photos, tmp_path):
    out_model = tmp_path / "models" / "again.explain.onnx"
    r = invoke("augment", tiny.plain, "-o", out_model, "--labels", tiny.root / "labels.json")
    assert r.exit_code == 0, r.output
    assert out_model.is_file() and [f.name for f in out_model.parent.iterdir()] == [out_model.name]
    out = tmp_path / "out"
    r = invoke("explain", out_model, photos[0], "-m", "gradcam,cam", "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    with Explainer(tiny.explain, device="cpu") as ex:
        ref = {m: ex.explain([photos[0]], method=m)[0] for m in ("gradcam", "cam")}
    for m in ("gradcam", "cam"):
        np.testing.assert_allclose(np.load(out / f"{photos[0].stem}.{m}.npy"), ref[m].heatmap, atol=1e-6)
    doc = json.loads((out / "report.json").read_text())
    assert {r["label"] for r in doc["results"]} == {ref["gradcam"].label}
    # a CAM map equals Grad-CAM on a GAP + linear head
    np.testing.assert_allclose(ref["cam"].heatmap, ref["gradcam"].heatmap, atol=1e-5)
    # augmenting an explain model again is refused cleanly
    r = invoke("augment", out_model, "-o", tmp_path / "twice.onnx")
    assert r.exit_code == 2 and "already an explain model" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "twice.onnx").exists()


@pytest.mark.parametrize("command,options", [
    ("explain", ["--method", "--target", "--out", "--batch-size", "--device", "--json", "--npy"]),
    ("score", ["--top-k", "--json", "--device", "--batch-size"]),
    ("inspect", ["--json"]),
    ("augment", ["--output", "--layer", "--labels", "--input-gradients", "--gradcam", "--mean", "--std"]),
])
def test_help_mentions_key_options(command, options):
    r = invoke(command, "--help")
    assert r.exit_code == 0
    for opt in options:
        assert opt in r.stdout, f"{command} --help lacks {opt}"
    if command == "explain":
        assert "gradcam" in r.stdout and "integrated_gradients" in r.stdout


@pytest.mark.parametrize("command", ["explain", "score"])
def test_device_cuda_without_gpu_is_a_clean_error(tiny, photos, tmp_path, command):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    out = tmp_path / "out"
    extra = ["--out", out] if command == "explain" else []
    r = invoke(command, tiny.explain, photos[0], "--device", "cuda", *extra)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "cuda" in lines[0].lower()
    assert not out.exists()


def test_cli_explain_same_name_twice_gets_two_outputs(tiny, photos, tmp_path):
    """cat.png and cat.jpg (different pictures) must not overwrite each other's outputs."""
    d = tmp_path / "pics"
    d.mkdir()
    small = [cv2.resize(cv2.imread(str(p)), (96, 64), interpolation=cv2.INTER_AREA) for p in photos[:2]]
    cv2.imwrite(str(d / "cat.png"), small[0])
    cv2.imwrite(str(d / "cat.jpg"), small[1])
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, d, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "report.json").read_text())
    assert len(doc["results"]) == 2
    stems = {Path(rec["outputs"]["heatmap"]).name for rec in doc["results"]}
    assert len(stems) == 2
    with Explainer(tiny.explain, device="cpu") as ex:
        for rec in doc["results"]:
            ref = ex.explain([rec["file"]], method="gradcam")[0].heatmap
            np.testing.assert_array_equal(np.load(rec["outputs"]["heatmap"]), ref)
