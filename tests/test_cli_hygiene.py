"""Command-line hygiene: closed pipes, the overlay's title, flat maps, bounded numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from onnx_explain.command.cli import MAX_BATCH, MAX_THREADS, main
from onnx_explain.overlay import caption, draw_box, is_flat


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ----------------------------------------------------------------------------- broken pipe


def run_into_closed_pipe(*args) -> subprocess.CompletedProcess:
    """Run the command with a stdout nobody reads (`| head -1` after head is gone)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, whatever the timing
    try:
        return subprocess.run([sys.executable, "-c", "from onnx_explain.command.cli import main; main()",
                               *map(str, args)], stdout=write_end, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [
    lambda tiny, photo: ["inspect", tiny.explain],
    lambda tiny, photo: ["score", tiny.explain, photo, "--json", "--device", "cpu"],
    lambda tiny, photo: ["--help"],
], ids=["inspect", "score", "help"])
def test_closed_pipe_ends_quietly(tiny, good_image, args):
    r = run_into_closed_pipe(*args(tiny, good_image))
    assert r.returncode in (0, 141), r.stderr.decode()
    assert r.stderr.decode() == ""


# ----------------------------------------------------------------------------- overlay title


def test_caption_text():
    assert caption("tabby cat", 0.923) == "tabby cat  p=0.92"
    assert caption("180", 0.923) == "class 180  p=0.92"  # no labels: the index, never "180 0.92"
    assert caption("caf\u00e9\nnoir", 0.1) == "caf\\xe9\\nnoir  p=0.10"  # ASCII only, one line
    assert caption("\u732b", 1.0) == "\\u732b  p=1.00"
    long = caption("x" * 100, 0.5)
    assert long == "x" * 45 + "...  p=0.50"
    assert caption("tabby cat") == "tabby cat"


def test_draw_box_writes_the_escaped_label():
    img = np.zeros((80, 160, 3), np.uint8)
    a = draw_box(img, (20, 30, 120, 70), (255, 255, 255), label="caf\u00e9", thickness=1)
    b = draw_box(img, (20, 30, 120, 70), (255, 255, 255), label="caf\\xe9", thickness=1)
    np.testing.assert_array_equal(a, b)


def test_overlay_title_of_an_explanation(tiny, good_image, tmp_path, monkeypatch):
    import onnx_explain.overlay as overlay_module

    titles = []
    real = overlay_module.draw_box

    def spy(image, box, color=(255, 0, 0), label=None, thickness=None):
        titles.append(label)
        return real(image, box, color, label, thickness)

    monkeypatch.setattr(overlay_module, "draw_box", spy)
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    (rec,) = json.loads((out / "report.json").read_text())["results"]
    assert titles == [f"{rec['label']}  p={rec['probability']:.2f}"]


# ----------------------------------------------------------------------------- flat maps


def test_is_flat():
    assert is_flat(np.zeros((7, 7))) and is_flat(np.full((3, 3), 0.4)) and is_flat(np.array([[np.nan, 0.0]]))
    assert not is_flat(np.eye(3))


def test_flat_map_is_warned_and_reported(tiny, good_image, tmp_path):
    out = tmp_path / "out"
    r = invoke("explain", tiny.zero_grad, good_image, "--out", out, "--target", tiny.zero_class,
               "-m", "gradcam,saliency", "--device", "cpu")
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2
    for method, line in zip(("gradcam", "saliency"), warnings):
        assert str(good_image) in line and method in line and "flat map" in line
    doc = json.loads((out / "report.json").read_text())
    assert [rec["flat_map"] for rec in doc["results"]] == [True, True] and doc["flat_maps"] == 2
    assert r.stdout.count("(flat map)") == 2
    assert not cv2.imread(str(out / "cat.gradcam.png")) is None

    # a model with a gradient: no warning, flat_map false
    out2 = tmp_path / "out2"
    r = invoke("explain", tiny.explain, good_image, "--out", out2, "--device", "cpu")
    assert r.exit_code == 0 and "warning:" not in r.stderr
    doc = json.loads((out2 / "report.json").read_text())
    assert doc["results"][0]["flat_map"] is False and doc["flat_maps"] == 0


# ----------------------------------------------------------------------------- bounded numbers


def _usage_error(r, option: str) -> None:
    assert r.exit_code == 2, r.output
    assert option in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("option,value", [
    ("--threads", 99999), ("--threads", 0), ("--threads", MAX_THREADS + 1), ("--batch-size", MAX_BATCH + 1),
])
def test_threads_and_batch_size_are_bounded(tiny, good_image, tmp_path, option, value):
    out = tmp_path / "out"
    images = tmp_path / "images"
    images.mkdir()
    commands = [
        ["explain", tiny.explain, good_image, "--out", out],
        ["score", tiny.explain, good_image],
        ["evaluate", tiny.explain, "--images", images, "--boxes", images, "--out", out],
    ]
    for command in commands:
        _usage_error(invoke(*command, option, value), option)
    assert not out.exists()
    assert MAX_THREADS <= 256 and MAX_THREADS >= 1


def test_top_k_within_the_models_classes(tiny, good_image, tmp_path):
    out = tmp_path / "out"
    too_many = tiny.classes + 1
    for command in (["explain", tiny.explain, good_image, "--out", out], ["score", tiny.explain, good_image]):
        r = invoke(*command, "--top-k", too_many, "--device", "cpu")
        assert r.exit_code == 2, r.output
        (line,) = [ln for ln in r.output.splitlines() if ln.strip()]
        assert line == f"error: --top-k {too_many} is more than the model's {tiny.classes} classes"
    assert not out.exists()
    # the default (5) is cut to the 4 classes; asking for exactly 4 is fine
    for extra in ([], ["--top-k", tiny.classes]):
        r = invoke("score", tiny.explain, good_image, "--json", "--device", "cpu", *extra)
        assert r.exit_code == 0, r.output
        assert len(json.loads(r.stdout)["results"][0]["top_k"]) == tiny.classes


@pytest.mark.parametrize("args,option", [
    (["export", "resnet18", "-o", "x.onnx", "--opset", "99"], "--opset"),
    (["export", "resnet18", "-o", "x.onnx", "--input-size", "0"], "--input-size"),
    (["make-evalset", "set", "-n", "100000"], "--images"),
])
def test_other_numbers_are_bounded(tmp_path, args, option, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _usage_error(invoke(*args), option)
    assert list(tmp_path.iterdir()) == []
