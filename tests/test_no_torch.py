"""The runtime where torch is not installed.

A subprocess installs a ``sys.meta_path`` finder that makes ``import torch`` (and captum,
torchvision) fail as on a machine without them, then imports onnx_explain and runs the
command line -- ``score``, ``explain`` (gradcam and saliency), ``inspect``, ``augment`` and
an explain with the freshly augmented model -- on models this (torch-equipped) process
prepared.  Everything must succeed, and torch must not have been imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    r'''
    import importlib.abc, json, sys

    BLOCKED = {"torch", "captum", "torchvision", "torchaudio"}

    class NoTorch(importlib.abc.MetaPathFinder):
        """As if these packages were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True

    import onnx_explain  # noqa: F401
    import onnx_explain.explainer  # noqa: F401
    from click.testing import CliRunner
    from onnx_explain.command.cli import main

    explain_model, plain_model, labels, image, out = sys.argv[1:6]
    runs = {}

    def run(key, *args):
        r = CliRunner().invoke(main, list(args))
        runs[key] = {"exit": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                     "exception": None if r.exception is None or isinstance(r.exception, SystemExit)
                     else repr(r.exception)}

    run("score", "score", explain_model, image, "--json", "--top-k", "2")
    run("explain", "explain", explain_model, image, "-m", "gradcam,saliency", "--out", out + "/a", "--json")
    run("inspect_plain", "inspect", plain_model, "--json")
    run("inspect_explain", "inspect", explain_model)
    run("augment", "augment", plain_model, "-o", out + "/again.onnx", "--labels", labels)
    run("explain_again", "explain", out + "/again.onnx", image, "-m", "gradcam,saliency", "--out", out + "/b")
    run("export", "export", "resnet18", "-o", out + "/r.onnx")
    print(json.dumps({
        "blocked": blocked,
        "runs": runs,
        "torch_modules": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED),
    }))
    '''
)


@pytest.fixture(scope="module")
def no_torch_run(tiny, photos, tmp_path_factory):
    import cv2

    work = tmp_path_factory.mktemp("no_torch")
    image = work / "cat.png"
    cv2.imwrite(str(image), cv2.resize(cv2.imread(str(photos[0])), (120, 80), interpolation=cv2.INTER_AREA))
    out = work / "out"
    # cwd outside the repository: the installed package, not the source folder, is imported
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny.explain), str(tiny.plain), str(tiny.root / "labels.json"),
         str(image), str(out)],
        cwd=work, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), image, out


def _ok(result, key):
    run = result["runs"][key]
    assert run["exit"] == 0 and run["exception"] is None, f"{key}: {run}"
    assert "Traceback" not in run["stdout"] + run["stderr"], key
    return run


def test_torch_is_really_blocked(no_torch_run):
    result, _, _ = no_torch_run
    assert result["blocked"] is True


def test_torch_never_imported(no_torch_run):
    result, _, _ = no_torch_run
    assert result["torch_modules"] == []


def test_score_without_torch(no_torch_run, tiny):
    result, image, _ = no_torch_run
    doc = json.loads(_ok(result, "score")["stdout"])
    (res,) = doc["results"]
    assert res["file"] == str(image) and len(res["top_k"]) == 2
    probs = [t["probability"] for t in res["top_k"]]
    assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
    assert all(t["label"] in tiny.labels for t in res["top_k"])


def test_explain_without_torch_matches_with_torch(no_torch_run, tiny):
    from onnx_explain.explainer import Explainer

    result, image, out = no_torch_run
    doc = json.loads(_ok(result, "explain")["stdout"])
    assert [r["method"] for r in doc["results"]] == ["gradcam", "saliency"]
    with Explainer(tiny.explain, device="cpu") as ex:
        for m in ("gradcam", "saliency"):
            heat = np.load(out / "a" / f"cat.{m}.npy")
            ref = ex.explain([image], method=m)[0].heatmap
            np.testing.assert_allclose(heat, ref, atol=1e-6)
            assert (out / "a" / f"cat.{m}.png").is_file()


def test_inspect_without_torch(no_torch_run):
    result, _, _ = no_torch_run
    info = json.loads(_ok(result, "inspect_plain")["stdout"])
    assert info["explain_model"] is False and info["candidate_layers"]
    text = _ok(result, "inspect_explain")["stdout"]
    assert "explain model" in text and "grad_activations" in text


def test_augment_without_torch(no_torch_run, tiny):
    import onnx

    result, image, out = no_torch_run
    _ok(result, "augment")
    _ok(result, "explain_again")
    again = onnx.load(str(out / "again.onnx"))
    reference = onnx.load(str(tiny.explain))
    assert [o.name for o in again.graph.output] == [o.name for o in reference.graph.output]
    props = {p.key: p.value for p in again.metadata_props}
    assert json.loads(props["onnx_explain.labels"]) == tiny.labels
    for m in ("gradcam", "saliency"):
        np.testing.assert_allclose(np.load(out / "b" / f"cat.{m}.npy"), np.load(out / "a" / f"cat.{m}.npy"),
                                   atol=1e-6)


def test_export_without_torch_is_a_clean_error(no_torch_run):
    result, _, out = no_torch_run
    run = result["runs"]["export"]
    assert run["exit"] == 2 and run["exception"] is None, run
    assert "Traceback" not in run["stdout"] + run["stderr"]
    assert "torch" in run["stderr"] and "pip install" in run["stderr"]
    assert not (out / "r.onnx").exists()
