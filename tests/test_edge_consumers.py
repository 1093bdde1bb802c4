"""The explain model beyond Python: lean files, outputs on demand, pixels in, maps out, and
the browser page and Node script that run them.

Every comparison is against the Python runtime (``Explainer`` / ``ExplainSession`` and the
methods in ``onnx_explain.methods``) on the same model and image, through plain
``onnxruntime.InferenceSession`` for the files (no pruning: what a C++, JS or Triton
consumer does).  Speed is measured in ``benchmarks/bench_consumers.py``, not here.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_explain import Explainer, contract
from onnx_explain.augment import augment_model
from onnx_explain.gates import _subgraph_reads, inline_gates, read_gates
from onnx_explain.preprocess import preprocess, resize_image
from onnx_explain.session import ExplainSession

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"
NODE = ROOT / "examples" / "node"
SAMPLE = WEB / "sample" / "chelsea.png"
EDGE_OUTPUTS = ["target_class", "gradcam", "gradcam_plusplus", "layercam", "probabilities", "top_k"]
METHODS = {"gradcam": "gradcam", "gradcam++": "gradcam_plusplus", "layercam": "layercam"}
TOLERANCE = 1e-4  # max abs difference on maps in [0, 1]
EGYPTIAN_CAT = 285

def _session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3  # not the flag inputs' "initializer appears in graph inputs" notice
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def _run(model, feeds: dict) -> dict[str, np.ndarray]:
    s = model if isinstance(model, ort.InferenceSession) else _session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def effl0(tmp_path_factory):
    """The pretrained EfficientNet-Lite0, exported once: the plain model and the files built
    from it (the default full file ungated and on demand, the lean edge file with pixels)."""
    pytest.importorskip("torch")
    from onnx_explain.export import export_plain

    folder = tmp_path_factory.mktemp("effl0")
    plain = export_plain("efficientnet_lite0", None, input_size=224).model
    full = dict(input_gradients=True, guided=True, gradcam=True)
    files = {
        "plain": plain,
        "ungated": augment_model(plain, **full),
        "on_demand": augment_model(plain, **full, on_demand=True),
        "edge": augment_model(plain, outputs=EDGE_OUTPUTS, pixels=True),
    }
    paths = {}
    for name, proto in files.items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(proto, str(paths[name]))
    return type("Files", (), {"protos": files, "paths": paths, "folder": folder})


@pytest.fixture(scope="session")
def chelsea224() -> np.ndarray:
    """The bundled sample: scikit-image's chelsea at the model's size, RGB uint8."""
    return _rgb(SAMPLE)


@pytest.fixture(scope="session")
def python_reference(effl0, chelsea224):
    """What the Python runtime says about the sample (float input, its own preprocessing)."""
    with Explainer(effl0.paths["ungated"], device="cpu", threads=2) as ex:
        heatmaps = {}
        for method, output in METHODS.items():
            (e,) = ex.explain([chelsea224], method=method)
            heatmaps[output] = e.heatmap
        (p,) = ex.predict([chelsea224], top_k=5)
        probabilities = ex.session(preprocess(chelsea224, ex.session.preprocess)[0][None], None,
                                   ["probabilities"])["probabilities"][0]
    return {"class": e.target_class, "label": e.label, "probability": e.probability, "heatmaps": heatmaps,
            "top_classes": list(p.classes), "top_probabilities": list(p.probabilities), "probabilities": probabilities}


# ----------------------------------------------------------------------------- the output set


def test_outputs_are_exactly_the_ones_asked_for(tiny):
    plain = onnx.load(str(tiny.plain))
    lean = augment_model(plain, outputs=["gradcam"])
    assert [o.name for o in lean.graph.output] == ["logits", "gradcam"]
    assert [i.name for i in lean.graph.input] == ["input", "target"]
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in lean.metadata_props})
    assert meta.outputs == {"logits": "logits", "gradcam": "gradcam"}
    # the same map as the full file's, which computes everything else too
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    feeds = {"input": x, "target": np.array([-1, 2, 0])}
    full = _run(augment_model(plain, input_gradients=True, guided=True, gradcam=True), feeds)
    got = _run(lean, feeds)
    np.testing.assert_array_equal(got["gradcam"], full["gradcam"])
    np.testing.assert_array_equal(got["logits"], full["logits"])
    assert len(lean.graph.node) < len(augment_model(plain, gradcam=True).graph.node)

    edge = augment_model(plain, outputs=["probabilities", "top_k"], top_k=3)
    assert [o.name for o in edge.graph.output] == ["logits", "probabilities", "top_k_values", "top_k_indices"]
    assert [i.name for i in edge.graph.input] == ["input"]  # nothing depends on target: not an input
    out = _run(edge, {"input": x})
    z = out["logits"].astype(np.float64)
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-6)
    np.testing.assert_array_equal(out["top_k_indices"], np.argsort(-probs, axis=1)[:, :3])
    np.testing.assert_allclose(out["top_k_values"], np.sort(probs, axis=1)[:, ::-1][:, :3], atol=1e-6)

    with pytest.raises(ValueError, match="unknown output 'saliency'"):
        augment_model(plain, outputs=["gradcam", "saliency"])
    with pytest.raises(ValueError, match="not both"):
        augment_model(plain, outputs=["gradcam"], input_gradients=True)


def test_on_demand_outputs_behind_flags(tiny):
    """Flags off: grad_input / guided_grad_input come back empty and everything else is the
    ungated file's, bit for bit; flags on: the ungated file's gradients.  The Python runtime
    (pruned sessions) gets the ungated file's numbers and graph from the on-demand file."""
    plain = onnx.load(str(tiny.plain))
    full = dict(input_gradients=True, guided=True, gradcam=True)
    ungated, gated = augment_model(plain, **full), augment_model(plain, **full, on_demand=True)
    assert read_gates(gated) == {"grad_input": "compute_grad_input", "guided_grad_input": "compute_guided_grad_input"}
    assert [o.name for o in gated.graph.output] == [o.name for o in ungated.graph.output]
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    feeds = {"input": x, "target": np.array([-1, 1])}
    ref, off = _run(ungated, feeds), _run(gated, feeds)
    for name in ref:
        if name in ("grad_input", "guided_grad_input"):
            assert off[name].shape == (0, 3, 32, 32), name
        else:
            np.testing.assert_array_equal(off[name], ref[name], err_msg=name)
    on = _run(gated, {**feeds, "compute_grad_input": np.array(True), "compute_guided_grad_input": np.array(True)})
    for name in ref:
        np.testing.assert_allclose(on[name], ref[name], rtol=1e-6, atol=1e-7, err_msg=name)
    one = _run(gated, {**feeds, "compute_guided_grad_input": np.array(True)})
    assert one["grad_input"].shape[0] == 0 and one["guided_grad_input"].shape[0] == 2

    # the Python runtime: pruned sessions splice the branch back in
    inlined = inline_gates(gated, ["grad_input", "guided_grad_input"])
    assert not any(n.op_type == "If" for n in inlined.graph.node)
    # node for node, but for duplicates the ungated file has (the twin arg-max MaxPool and
    # shape reads of the plain and the guided backward), merged once spliced
    counts, ref_counts = (collections.Counter(n.op_type for n in m.graph.node) for m in (inlined, ungated))
    assert counts <= ref_counts and counts.keys() == ref_counts.keys()
    assert sum((ref_counts - counts).values()) <= 6, ref_counts - counts
    assert {i.name for i in inlined.graph.input} == {"input", "target"}
    a, b = ExplainSession(ungated, device="cpu"), ExplainSession(gated, device="cpu")
    wanted = ["grad_input", "guided_grad_input", "grad_activations"]
    ra, rb = a(x, np.array([-1, 1]), wanted), b(x, np.array([-1, 1]), wanted)
    for name in wanted:
        np.testing.assert_array_equal(rb[name], ra[name], err_msg=name)


def test_grad_cam_request_to_the_full_file_runs_no_input_gradient_node(effl0):
    """What a consumer that cannot prune runs for Grad-CAM: the main graph of the on-demand
    file is the Grad-CAM file's, node for node, plus the If nodes; their branches read no
    forward value of the main graph (they recompute the forward from the image), so the
    main graph's forward keeps its fusions and layouts."""
    gated = effl0.protos["on_demand"]
    cam_only = augment_model(effl0.protos["plain"], gradcam=True)
    main = collections.Counter(n.op_type for n in gated.graph.node)
    assert main.pop("If") == 1 and main.pop("Or") == 1  # If(either flag), an If per output inside
    assert main == collections.Counter(n.op_type for n in cam_only.graph.node)

    produced = {o: n for n in gated.graph.node for o in n.output}
    forward: set[str] = set()  # the values the model's own output depends on
    stack = [gated.graph.output[0].name]
    while stack:
        node = produced.get(stack.pop())
        if node is not None and node.output[0] not in forward:
            forward.update(node.output)
            stack.extend(node.input)
    (node,) = (n for n in gated.graph.node if n.op_type == "If")
    outer = _subgraph_reads(node)  # what the branches read from the main graph, nested ones included
    assert not outer & forward, f"{node.name} reads forward values {sorted(outer & forward)[:5]}"
    assert "input" in outer  # the forward is recomputed from the image
    nested = [n for n in next(a.g for a in node.attribute if a.name == "then_branch").node if n.op_type == "If"]
    assert sorted(n.input[0] for n in nested) == ["compute_grad_input", "compute_guided_grad_input"]

    # and the flags on give the ungated file's gradients (plain ONNX Runtime, batch 2)
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
    feeds = {"input": x, "target": np.array([-1, 7])}
    ref = _session(effl0.paths["ungated"]).run(["grad_input", "guided_grad_input"], feeds)
    got = _session(effl0.paths["on_demand"]).run(
        ["grad_input", "guided_grad_input"],
        {**feeds, "compute_grad_input": np.array(True), "compute_guided_grad_input": np.array(True)})
    for r, g in zip(ref, got):
        assert np.linalg.norm(g - r) <= 1e-6 * np.linalg.norm(r)


def test_command_line_output_options(tiny, tmp_path):
    from click.testing import CliRunner

    from onnx_explain.command.cli import main

    def augment(*args):
        out = tmp_path / "x.onnx"
        out.unlink(missing_ok=True)
        result = CliRunner().invoke(main, ["augment", str(tiny.plain), "-o", str(out), *args])
        return result, (onnx.load(str(out)) if out.exists() else None)

    result, model = augment()  # the default: the full set, the input gradients on demand
    assert result.exit_code == 0, result.output
    assert read_gates(model) == {"grad_input": "compute_grad_input", "guided_grad_input": "compute_guided_grad_input"}
    assert "grad_input (on demand: compute_grad_input=true)" in result.output
    result, model = augment("--always")
    assert result.exit_code == 0 and read_gates(model) == {} and not any(n.op_type == "If" for n in model.graph.node)
    result, model = augment("--outputs", "gradcam,top_k", "--pixels", "--top-k", "3")
    assert result.exit_code == 0, result.output
    assert [o.name for o in model.graph.output] == ["logits", "gradcam", "top_k_values", "top_k_indices"]
    assert [i.name for i in model.graph.input] == ["pixels", "target"]
    assert model.graph.output[3].type.tensor_type.shape.dim[1].dim_value == 3
    assert "inputs pixels, target; outputs gradcam, top_k_values, top_k_indices" in result.output
    for args, words in ((("--outputs", "gradcam", "--no-gradcam"), "leave out --no-gradcam"),
                        (("--outputs", "gradcam,saliency"), "unknown output 'saliency'"),
                        (("--outputs", ","), "no output named")):
        result, model = augment(*args)
        assert result.exit_code == 2 and words in result.output and model is None, result.output


# ----------------------------------------------------------------------------- pixels and maps


def test_sample_is_chelsea_at_the_model_size(photos, chelsea224):
    np.testing.assert_array_equal(chelsea224, resize_image(_rgb(photos[0]), (224, 224)))


def test_pixels_file_gives_the_python_runtime_heatmaps(effl0, chelsea224, python_reference):
    """The raw uint8 photo into ``pixels``: the class, probabilities, top-5 and the three
    maps equal the Python runtime's (its own preprocessing of the same photo, its methods)."""
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in effl0.protos["edge"].metadata_props})
    for name in ("gradcam", "gradcam_plusplus", "layercam", "top_k_values", "top_k_indices"):
        assert meta.outputs[name] == name
    assert meta.outputs["softmax"] == "probabilities" and "probabilities" not in meta.outputs  # logits model
    session = _session(effl0.paths["edge"])
    batch = session.get_inputs()[0].shape[0]
    assert isinstance(batch, str)  # dynamic
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("pixels", "tensor(uint8)", [batch, 224, 224, 3]), ("target", "tensor(int64)", [batch])]
    out = _run(session, {"pixels": chelsea224[None], "target": np.array([-1])})
    ref = python_reference
    assert ref["class"] == EGYPTIAN_CAT and ref["label"] == "Egyptian cat" and 0.76 < ref["probability"] < 0.80
    assert int(out["target_class"][0]) == ref["class"]
    assert out["top_k_indices"][0].tolist() == ref["top_classes"]
    np.testing.assert_allclose(out["top_k_values"][0], ref["top_probabilities"], atol=1e-5)
    np.testing.assert_allclose(out["probabilities"][0], ref["probabilities"], atol=1e-5)
    for name, heatmap in ref["heatmaps"].items():
        got = out[name][0]
        assert got.shape == heatmap.shape == (224, 224)
        assert got.min() == 0.0 and got.max() <= 1.0
        diff = float(np.abs(got - heatmap).max())
        assert diff <= TOLERANCE, f"{name}: max abs difference {diff}"
    # the three methods do differ: the test would see a wrong output name
    assert np.abs(out["gradcam"] - out["layercam"]).max() > 0.01


def test_in_graph_maps_equal_the_methods_on_a_batch(effl0):
    """On the float input, several images and classes at once: the in-graph maps equal the
    Python methods' maps (normalised, resized to the input as the runtime does)."""
    from onnx_explain.methods import create, normalize01
    from onnx_explain.preprocess import Geometry

    proto = augment_model(effl0.protos["plain"], outputs=["target_class", "gradcam", "gradcam_plusplus", "layercam"])
    x = np.random.default_rng(3).uniform(-2, 2, (3, 3, 224, 224)).astype(np.float32)
    target = np.array([-1, 281, 9])
    out = _run(proto, {"input": x, "target": target})
    runtime = ExplainSession(effl0.paths["ungated"], device="cpu", threads=2)
    geometry = Geometry((224, 224), (224, 224), (224, 224), (0, 0))
    for method, name in METHODS.items():
        result = create(method, runtime).attribute(x, target)
        np.testing.assert_array_equal(out["target_class"], result.target_class)
        for i, raw in enumerate(normalize01(result.maps)):
            diff = float(np.abs(out[name][i] - geometry.to_original(raw)).max())
            assert diff <= TOLERANCE, f"{name}[{i}]: {diff}"


def _nhwc_softmax_model():
    torch = pytest.importorskip("torch")
    from torch import nn

    from torch_reference import export

    class NHWC(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1),
                                      nn.ReLU())
            self.fc = nn.Linear(12, 4)

        def forward(self, x):  # x: N x H x W x C
            return torch.softmax(self.fc(self.body(x.permute(0, 3, 1, 2)).mean((2, 3))), dim=1)

    return export(NHWC().eval(), torch.randn(2, 20, 20, 3))


@pytest.mark.parametrize("case", ["bgr", "nhwc"])
def test_pixels_apply_the_metadata_preprocessing(tiny, case):
    """Colour order, scale, mean, std and layout from the metadata, in the graph: the
    ``pixels`` file on uint8 photos equals the float file on the Python runtime's
    preprocessing of them (model output, Grad-CAM, input gradient)."""
    if case == "bgr":
        plain = onnx.load(str(tiny.plain))
        pre = contract.Preprocess(size=(32, 32), color="BGR", scale=1 / 127.5, mean=(1.0, 0.9, 1.1), std=(0.5, 0.6, 0.7))
    else:
        plain = _nhwc_softmax_model()
        pre = contract.Preprocess(size=(20, 20), layout="NHWC", scale=0.01, mean=(0.3,), std=(1.5,))
    opts = dict(preprocess=pre, outputs=["target_class", "grad_input", "gradcam", "probabilities"])
    floats, pixels = augment_model(plain, **opts), augment_model(plain, **opts, pixels=True)
    rng = np.random.default_rng(4)
    photos = rng.integers(0, 256, (3, *pre.size, 3), dtype=np.uint8)
    batch = np.stack([preprocess(p, pre)[0] for p in photos])
    target = np.array([-1, 2, 0])
    image_name = floats.graph.input[0].name
    ref = _run(floats, {image_name: batch, "target": target})
    got = _run(pixels, {"pixels": photos, "target": target})
    assert got.keys() == ref.keys()
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    own = floats.graph.output[0].name
    if case == "nhwc":  # a model ending in Softmax: probabilities is its own output
        np.testing.assert_array_equal(got["probabilities"], got[own])


# ----------------------------------------------------------------------------- browser and Node


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _need(folder: Path, *packages: str) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/setup.sh test installs the examples' packages where it is)")
    missing = [p for p in packages if not (folder / "node_modules" / p / "package.json").is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed in {folder.relative_to(ROOT)}: run "
                    f"`npm ci --ignore-scripts` there (scripts/setup.sh test does)")


def _load_serve():
    spec = importlib.util.spec_from_file_location("onnx_explain_web_serve", WEB / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_browser_page_gives_the_python_runtime_heatmap(effl0, python_reference, photos, tmp_path):
    """The page in headless Chromium (onnxruntime-web, WebAssembly) on the bundled sample:
    the class, the top-5 and every map equal the Python runtime's; the screenshot shows the
    overlay (the canvas is redder than the photo where the map is hot, bluer where cold)."""
    _need(WEB, "onnxruntime-web", "playwright-core")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (scripts/setup.sh test installs Debian's chromium with apt-get)")
    photo = tmp_path / "chelsea.png"  # the full-size photo, for the page's file input
    shutil.copy(photos[0], photo)
    server = _load_serve().make_server(0, effl0.paths["edge"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address
        assert host == "127.0.0.1"
        result, shot, canvas = tmp_path / "page.json", tmp_path / "page.png", tmp_path / "canvas.png"
        run = subprocess.run(
            ["node", str(WEB / "test" / "drive.mjs"), "--url", f"http://127.0.0.1:{port}/", "--out", str(result),
             "--screenshot", str(shot), "--canvas", str(canvas), "--chromium", chromium, "--timeout", "120",
             "--upload-model", str(effl0.paths["on_demand"]), "--upload-image", str(photo)],
            capture_output=True, text=True, timeout=200, cwd=WEB)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stdout + run.stderr
    page = json.loads(result.read_text())
    ref = python_reference
    assert page["classIndex"] == ref["class"] and page["label"] == "Egyptian cat"
    assert abs(page["probability"] - ref["probability"]) <= 1e-4
    assert [t["index"] for t in page["top"]] == ref["top_classes"]
    assert page["top5"][0].startswith("Egyptian cat") and len(page["top5"]) == 5
    # the file inputs: the full file (float input, flags off) on the sample, then the full-size photo
    (model_upload, image_upload) = page["uploads"]
    assert model_upload["state"] == "done" and model_upload["top"] == ref["top_classes"], model_upload
    assert image_upload["state"] == "done" and image_upload["classIndex"] == EGYPTIAN_CAT, image_upload
    for name, heatmap in ref["heatmaps"].items():
        got = np.asarray(page["maps"][name], np.float32).reshape(224, 224)
        diff = float(np.abs(got - heatmap).max())
        assert diff <= TOLERANCE, f"{name}: max abs difference {diff}"
    # the canvas: the photo at 448 x 448 with the Grad-CAM map over it at opacity 0.5
    drawn = cv2.cvtColor(cv2.imread(str(canvas), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.int32)
    photo = cv2.resize(_rgb(SAMPLE), drawn.shape[1::-1], interpolation=cv2.INTER_LINEAR).astype(np.int32)
    heat = cv2.resize(ref["heatmaps"]["gradcam"], drawn.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    redness = (drawn[..., 0] - drawn[..., 2]) - (photo[..., 0] - photo[..., 2])
    hot, cold = redness[heat > 0.9].mean(), redness[heat < 0.1].mean()
    assert hot > 30 and cold < -30, (hot, cold)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("ONNX_EXPLAIN_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "web-page.png")


def test_node_script_gives_the_python_runtime_numbers(effl0, python_reference, tmp_path):
    """``node --test`` in examples/node against the values the Python runtime writes here."""
    _need(NODE, "onnxruntime-node", "pngjs", "jpeg-js")
    ref = python_reference
    maps = {}
    for name, heatmap in ref["heatmaps"].items():
        maps[name] = f"{name}.f32"
        heatmap.astype("<f4").tofile(tmp_path / maps[name])
    (tmp_path / "reference.json").write_text(json.dumps({
        "model": str(effl0.paths["edge"]), "image": str(SAMPLE), "class_index": ref["class"], "label": ref["label"],
        "probability": ref["probability"], "top_classes": ref["top_classes"], "maps": maps, "tolerance": TOLERANCE}))
    env = {**os.environ, "ONNX_EXPLAIN_REFERENCE": str(tmp_path)}
    run = subprocess.run(["node", "--test"], cwd=NODE, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# pass 4" in run.stdout and "# skipped 0" in run.stdout, run.stdout[-2000:]
