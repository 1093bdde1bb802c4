"""Bad inputs through `onnx-explain explain`: each one reported by name, the rest still done.

Exit status: 1 when some inputs failed (every good image is still explained, every bad one
named on one line), 2 for a model or usage error (nothing written).  Never a traceback,
never a NaN, never a half-written or temporary file in the output folder.
"""

from __future__ import annotations

import errno
import json
import resource
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_explain import contract
from onnx_explain.command.cli import main
from onnx_explain.session import ExplainSession
from test_images import make_png

GRADIENT_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "saliency",
                    "gradient_x_input", "smoothgrad", "integrated_gradients", "guided_backprop", "guided_gradcam")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_clean_out_dir(out: Path, expected: set[str]) -> None:
    """Exactly the expected files, each complete (decodes/parses), no temporary leftovers."""
    names = {f.name for f in out.iterdir()}
    assert names == expected, f"unexpected files: {sorted(names ^ expected)}"
    for f in out.iterdir():
        if f.suffix == ".png":
            assert cv2.imread(str(f)) is not None, f
        elif f.suffix == ".npy":
            assert np.isfinite(np.load(f)).all(), f
        elif f.suffix == ".json":
            json.loads(f.read_text())


def _jpeg(photo: Path) -> bytes:
    ok, enc = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(photo)), (96, 64)))
    assert ok
    return enc.tobytes()


def _png(photo: Path) -> bytes:
    ok, enc = cv2.imencode(".png", cv2.resize(cv2.imread(str(photo)), (96, 64)))
    assert ok
    return enc.tobytes()


def _one_pixel(_: Path) -> bytes:
    ok, enc = cv2.imencode(".png", np.full((1, 1, 3), 200, np.uint8))
    assert ok
    return enc.tobytes()


# name -> (file name, bytes from a photo (None: the file does not exist), words of the message)
BAD_FILES = {
    "missing": ("missing.jpg", None, ["no such file"]),
    "empty": ("empty.jpg", lambda p: b"", ["empty"]),
    "text": ("notes.jpg", lambda p: b"shopping list:\n- milk\n- bread\n", ["not an image", "text"]),
    "truncated_jpeg": ("cut.jpg", lambda p: _jpeg(p)[: len(_jpeg(p)) // 2], ["truncated jpeg"]),
    "truncated_png": ("cut.png", lambda p: _png(p)[: len(_png(p)) // 2], ["truncated png"]),
    "one_pixel": ("dot.png", _one_pixel, ["too small", "1x1"]),
    "huge_header": ("bomb.png", lambda p: make_png(30000, 30000, 8, 2), ["too large", "30000x30000"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_image_next_to_a_good_one(case, tiny, good_image, photos, tmp_path):
    name, make, words = BAD_FILES[case]
    bad = tmp_path / "bad" / name
    bad.parent.mkdir()
    if make is not None:
        bad.write_bytes(make(photos[1]))
    out = tmp_path / "out"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    r = invoke("explain", tiny.explain, bad, good_image, "--out", out, "--device", "cpu")
    seconds = time.perf_counter() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024

    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    (line,) = error_lines(r.output)  # the bad file, on one line, by name
    assert str(bad) in line, line
    for w in words:
        assert w in line.lower(), line
    # the good image is explained all the same
    assert f"{good_image}: gradcam -> " in r.stdout
    assert_clean_out_dir(out, {"cat.gradcam.png", "cat.gradcam.npy", "report.json"})
    doc = json.loads((out / "report.json").read_text())
    assert doc["images"] == 1 and doc["failed"] == 1 and len(doc["results"]) == 1
    assert doc["results"][0]["file"] == str(good_image)
    (err,) = doc["errors"]
    assert str(bad) in err["error"] and "\n" not in err["error"]
    if case == "huge_header":  # refused from the header: no 2.7 GB decode, no waiting
        assert seconds < 10, seconds
        assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"


def test_several_bad_files_each_named(tiny, good_image, photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    bad = []
    for case in ("empty", "text", "truncated_png", "one_pixel"):
        name, make, _ = BAD_FILES[case]
        (folder / name).write_bytes(make(photos[1]))
        bad.append(folder / name)
    (folder / good_image.name).write_bytes(good_image.read_bytes())
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, folder, "--out", out, "-m", "gradcam,saliency", "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    lines = error_lines(r.output)
    assert len(lines) == len(bad)
    for b in bad:
        assert sum(str(b) in line for line in lines) == 1, b
    assert "4 input(s) failed" in r.stdout
    assert_clean_out_dir(out, {"cat.gradcam.png", "cat.gradcam.npy", "cat.saliency.png", "cat.saliency.npy",
                               "report.json"})


def test_only_bad_images_is_an_error_and_writes_nothing(tiny, photos, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a picture\n")
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, bad, tmp_path / "missing.png", "--out", out, "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert any("no image could be read" in line for line in error_lines(r.output))
    assert sum(str(bad) in line for line in error_lines(r.output)) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- model / usage errors


def _model_error(tiny, model, good_image, tmp_path, *extra):
    out = tmp_path / "out"
    r = invoke("explain", model, good_image, "--out", out, "--device", "cpu", *extra)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert not out.exists(), "a failed run created the output folder"
    return lines[0]


def test_model_file_that_is_not_onnx(tiny, good_image, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    line = _model_error(tiny, model, good_image, tmp_path)
    assert str(model) in line and "not an ONNX model" in line


def test_bytes_that_parse_as_an_empty_protobuf(tiny, good_image, tmp_path):
    """b"\\x08\\x07" is a valid ModelProto (ir_version=7) with no graph: not a model."""
    model = tmp_path / "tiny.onnx"
    model.write_bytes(b"\x08\x07")
    line = _model_error(tiny, model, good_image, tmp_path)
    assert str(model) in line and "not an ONNX model" in line
    for command in (["inspect", model], ["augment", model, "-o", tmp_path / "x.onnx"]):
        r = invoke(*command)
        assert r.exit_code == 2 and "not an ONNX model" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.onnx").exists()


def test_missing_and_empty_model_files(tiny, good_image, tmp_path):
    line = _model_error(tiny, tmp_path / "nope.onnx", good_image, tmp_path)
    assert str(tmp_path / "nope.onnx") in line and "no such" in line
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    line = _model_error(tiny, empty, good_image, tmp_path)
    assert str(empty) in line and "empty" in line


def test_plain_onnx_model_says_run_augment(tiny, good_image, tmp_path):
    line = _model_error(tiny, tiny.plain, good_image, tmp_path)
    assert str(tiny.plain) in line and "not an explain model" in line and "onnx-explain augment" in line
    r = invoke("score", tiny.plain, good_image)
    assert r.exit_code == 2 and "augment" in r.output and "Traceback" not in r.output


def test_target_class_out_of_range(tiny, good_image, tmp_path):
    line = _model_error(tiny, tiny.explain, good_image, tmp_path, "--target", str(tiny.classes))
    assert "out of range" in line and f"0..{tiny.classes - 1}" in line and str(tiny.classes) in line
    line = _model_error(tiny, tiny.explain, good_image, tmp_path, "--target", "cat")
    assert "--target" in line


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--top-k", "0"]])
def test_nonsense_numbers_are_usage_errors(tiny, good_image, tmp_path, option):
    out = tmp_path / "out"
    for command in (["explain", tiny.explain, good_image, "--out", out], ["score", tiny.explain, good_image]):
        r = invoke(*command, *option)
        assert r.exit_code == 2, r.output
        assert option[0] in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_score_reports_bad_images_by_name(tiny, good_image, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a picture\n")
    r = invoke("score", tiny.explain, bad, good_image, "--json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert [res["file"] for res in doc["results"]] == [str(good_image)]
    (err,) = doc["errors"]
    assert str(bad) in err and "\n" not in err
    (line,) = error_lines(r.stderr)
    assert str(bad) in line and "Traceback" not in r.output


def test_method_the_model_cannot_do(tiny, good_image, tmp_path):
    line = _model_error(tiny, tiny.explain, good_image, tmp_path, "-m", "gradcam,nonsense")
    assert "unknown method 'nonsense'" in line
    # a model augmented without input gradients cannot do saliency: said before any work
    from onnx_explain.augment import augment_model

    slim = tmp_path / "slim.onnx"
    onnx.save(augment_model(onnx.load(str(tiny.plain))), str(slim))
    line = _model_error(tiny, slim, good_image, tmp_path, "-m", "gradcam,saliency")
    assert "saliency" in line and "grad_input" in line


def test_disk_full_while_writing_leaves_no_partial_file(tiny, good_image, tmp_path, monkeypatch):
    import onnx_explain.outputs as outputs

    real_save = np.save

    def full_disk(f, arr, **kwargs):
        f.write(b"\x93NUMPY")  # some bytes reach the temporary file ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(outputs.np, "save", full_disk)
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--device", "cpu")
    monkeypatch.setattr(outputs.np, "save", real_save)
    assert r.exit_code == 2, r.output
    assert "No space left on device" in r.output and "Traceback" not in r.output
    # no .npy (not even a truncated one), no temporary file, no report claiming success
    assert {f.name for f in out.iterdir()} <= {"cat.gradcam.png"}


# ----------------------------------------------------------------------------- zero gradient


def test_all_zero_gradient_gives_zero_heatmaps_not_nan(tiny, good_image, tmp_path):
    # the premise: for ZERO_CLASS every gradient of this model is exactly zero
    s = ExplainSession(tiny.zero_grad, device="cpu")
    x = np.random.default_rng(0).normal(size=(2, 3, tiny.size, tiny.size)).astype(np.float32)
    got = s(x, np.full(2, tiny.zero_class), [contract.GRAD_ACTIVATIONS, contract.GRAD_INPUT,
                                              contract.GUIDED_GRAD_INPUT, contract.GRADCAM,
                                              contract.ACTIVATIONS])
    for name in (contract.GRAD_ACTIVATIONS, contract.GRAD_INPUT, contract.GUIDED_GRAD_INPUT):
        assert not got[name].any(), name
    assert got[contract.ACTIVATIONS].any()
    assert not np.isnan(got[contract.GRADCAM]).any() and not got[contract.GRADCAM].any()

    out = tmp_path / "out"
    r = invoke("explain", tiny.zero_grad, good_image, "--out", out, "--target", tiny.zero_class,
               "-m", ",".join(GRADIENT_METHODS), "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "nan" not in r.output.lower()
    h0, w0 = cv2.imread(str(good_image)).shape[:2]
    for m in GRADIENT_METHODS:
        heat = np.load(out / f"cat.{m}.npy")
        assert heat.shape == (h0, w0)
        assert not np.isnan(heat).any() and not heat.any(), m
        assert cv2.imread(str(out / f"cat.{m}.png")) is not None
    doc = json.loads((out / "report.json").read_text())  # strict JSON: a NaN would not parse
    assert len(doc["results"]) == len(GRADIENT_METHODS)
    for rec in doc["results"]:
        assert rec["class"] == tiny.zero_class
        assert rec["box"] is None  # nothing highlighted, no box
        assert 0 < rec["probability"] < 1
