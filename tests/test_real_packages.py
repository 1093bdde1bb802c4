"""Real classifiers from public packages, augmented from the command line as a user would
(preprocessing flags only), then checked through plain ONNX Runtime:

* the model's own output is bit for bit the original file's;
* the target layer has spatial extent;
* ``score``, ``activations``, ``grad_activations`` and ``grad_input`` equal an independent
  float64 autograd reference of the original file (onnx2torch), rel L2 <= 1e-5;
* ``explain`` runs on a real photo and writes its overlay.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_explain import contract
from onnx_explain.command.cli import main

from real_packages import REAL_MODELS, extract, float64_reference, kink_flips

TOL = 1e-5


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=REAL_MODELS, ids=lambda m: m.name)
def augmented(request, tmp_path_factory):
    real = request.param
    folder = tmp_path_factory.mktemp(real.name)
    plain = extract(real, folder)
    out = folder / f"{real.name}.explain.onnx"
    args = ["augment", str(plain), "-o", str(out)] + (["--size", real.size_flag] if real.size_flag else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return real, plain, out


def _run_explain_file(path, x):
    """The explain file through plain ONNX Runtime, the input gradient asked for by the flag
    that ``inspect`` names (ONNX Runtime's own ``get_inputs()`` does not list it)."""
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    flags = {g["output"]: g["flag"] for g in json.loads(res.output)["on_demand"]}
    text = CliRunner().invoke(main, ["inspect", str(path)]).output
    assert f"{flags[contract.GRAD_INPUT]}" in text and "feed true to compute 'grad_input'" in text, text
    model = onnx.load(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {model.graph.input[0].name: x, contract.TARGET: np.full(len(x), -1, dtype=np.int64),
             flags[contract.GRAD_INPUT]: np.array(True)}
    names = [o.name for o in session.get_outputs()]
    return model, dict(zip(names, session.run(None, feeds))), names[0]


def test_own_outputs_bit_for_bit_and_gradients_equal_float64_autograd(augmented):
    real, plain_path, explain_path = augmented
    x = np.random.default_rng(0).standard_normal((4, 3, *real.size)).astype(np.float32)
    explain, got, own_name = _run_explain_file(explain_path, x)
    plain = onnx.load(str(plain_path))

    original = ort.InferenceSession(str(plain_path), providers=["CPUExecutionProvider"])
    (own,) = original.run([own_name], {plain.graph.input[0].name: x})
    assert np.array_equal(got[own_name], own), f"{real.name}: own output changed by {np.abs(got[own_name] - own).max()}"

    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in explain.metadata_props})
    h, w = got[contract.ACTIVATIONS].shape[2:]
    assert h * w > 1, f"{real.name}: target layer {meta.target_layer} has no spatial extent ({h}x{w})"

    ref = float64_reference(plain, meta.target_layer, x, real.size)
    np.testing.assert_array_equal(got[contract.TARGET_CLASS], ref.top)
    top_logits = np.take_along_axis(ref.logits, ref.top[:, None], 1)[:, 0]
    assert rel(got[contract.SCORE], top_logits) <= TOL
    assert rel(got[contract.ACTIVATIONS], ref.activations) <= TOL
    # Per image: equal to 1e-5, unless float32 (ONNX Runtime's forward, which the explain
    # model differentiates exactly) puts an activation on the other side of a kink than
    # float64 does; then the two differ by that derivative step, and only there.
    flips = kink_flips(plain, x, real.size)
    for name, ours, theirs in ((contract.GRAD_ACTIVATIONS, got[contract.GRAD_ACTIVATIONS], ref.grad_activations),
                               (contract.GRAD_INPUT, got[contract.GRAD_INPUT], ref.grad_input)):
        errors = [rel(ours[i], theirs[i]) for i in range(len(x))]
        for i, error in enumerate(errors):
            assert error <= TOL or (flips[i] > 0 and error <= 1e-2), \
                f"{real.name}, image {i}: {name} rel L2 {error:.2e} ({flips[i]} kink decisions differ)"
    assert (flips == 0).sum() >= 1, f"{real.name}: every image flips a kink decision: test images too unlucky"


def test_explain_runs_on_a_real_photo(augmented, photos, tmp_path):
    real, _, explain_path = augmented
    chelsea = next(p for p in photos if p.stem == "chelsea")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["explain", str(explain_path), str(chelsea), "--out", str(out),
                                    "--method", "gradcam", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["failed"] == 0 and report["flat_maps"] == 0, report
    (result,) = report["results"]
    assert 0 <= result["class"] < len(result["top_k"]) + 10
    heatmap = np.load(out / "chelsea.gradcam.npy")
    assert heatmap.shape == (300, 451) and np.isfinite(heatmap).all()  # the photo's size
    assert heatmap.min() >= 0 and heatmap.max() <= 1 and heatmap.max() > heatmap.min()
    assert (out / "chelsea.gradcam.png").stat().st_size > 0
