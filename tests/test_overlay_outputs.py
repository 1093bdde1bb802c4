"""Overlays (exact colours, RGB order), boxes, and atomic writers that never leave partial files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_explain import outputs
from onnx_explain.outputs import (
    atomic_open,
    to_jsonable,
    write_bytes,
    write_json,
    write_npy,
    write_png,
)
from onnx_explain.overlay import COLORMAPS, colorize, draw_box, overlay

RNG = np.random.default_rng(3)


# --------------------------------------------------------------------------- colour maps


def test_colormap_names():
    for name in ("jet", "turbo", "inferno", "viridis", "magma", "hot", "plasma", "parula", "twilight"):
        assert name in COLORMAPS
    with pytest.raises(ValueError, match="unknown colormap 'nope'.*jet"):
        colorize(np.zeros((2, 2)), "nope")


def test_colorize_is_rgb_and_matches_opencv():
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    for name, cmap in COLORMAPS.items():
        expected = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None, :], cmap)[:, :, ::-1]
        np.testing.assert_array_equal(colorize(ramp, name), expected, err_msg=name)
    # Jet: 0 is dark blue, 1 is dark red, in RGB.
    np.testing.assert_array_equal(colorize(np.array([[0.0, 1.0]]), "JET")[0], [(0, 0, 128), (128, 0, 0)])
    # Out of range and NaN are clipped / zeroed.
    np.testing.assert_array_equal(colorize(np.array([[-3.0, np.nan, 7.0]]), "jet")[0], [(0, 0, 128), (0, 0, 128), (128, 0, 0)])


def test_overlay_exact_blend():
    img = np.full((2, 3, 3), 100, np.uint8)
    img[1, 2] = (0, 255, 10)
    heat = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]], np.float32)
    out = overlay(img, heat, "jet", alpha=0.5)
    colors = colorize(heat, "jet").astype(np.float64)
    np.testing.assert_array_equal(out, np.rint(0.5 * img + 0.5 * colors).astype(np.uint8))
    np.testing.assert_array_equal(out[0, 2], (114, 50, 50))  # (100 + 128) / 2, (100 + 0) / 2
    np.testing.assert_array_equal(out[1, 2], (64, 128, 5))
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)
    np.testing.assert_array_equal(overlay(img, heat, alpha=1.0), colorize(heat))
    np.testing.assert_array_equal(overlay(img, heat, "hot", alpha=0.25), np.rint(0.75 * img + 0.25 * colorize(heat, "hot")).astype(np.uint8))
    assert overlay(img[:, :, 0], heat).shape == (2, 3, 3)


def test_overlay_rejects_mismatched_heatmap():
    with pytest.raises(ValueError, match="to_original"):
        overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((7, 7)))
    with pytest.raises(ValueError):
        overlay(np.zeros((10, 10, 3), np.float32), np.zeros((10, 10)))
    with pytest.raises(ValueError):
        overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10)), alpha=1.5)


# --------------------------------------------------------------------------- boxes


def test_draw_box_pixels():
    img = np.zeros((20, 30, 3), np.uint8)
    out = draw_box(img, (2, 3, 12, 15), color=(255, 0, 0), thickness=1)
    assert (img == 0).all()  # input untouched
    red = np.all(out == (255, 0, 0), axis=2)
    expected = np.zeros((20, 30), bool)
    expected[3, 2:12] = expected[14, 2:12] = True
    expected[3:15, 2] = expected[3:15, 11] = True
    np.testing.assert_array_equal(red, expected)
    assert (out[~red] == 0).all()

    thick = draw_box(img, (2, 3, 12, 15), color=(0, 255, 0), thickness=2)
    green = np.all(thick == (0, 255, 0), axis=2)
    assert green[4, 3] and green[13, 10] and not green[5, 5]


def test_draw_box_clipped_and_labelled():
    img = np.full((60, 80, 3), 30, np.uint8)
    out = draw_box(img, (-10, -10, 200, 200), color=(0, 0, 255), thickness=1)
    assert (out[0, :] == (0, 0, 255)).all() and (out[-1, :] == (0, 0, 255)).all()
    assert (out[1:-1, 1:-1] == 30).all()
    labelled = draw_box(img, (20, 30, 60, 55), color=(255, 255, 0), label="cat 0.93", thickness=1)
    band = labelled[:30, 20:]
    assert (np.all(band == (255, 255, 0), axis=2)).sum() > 20  # filled label band above the box
    assert (np.all(band == (0, 0, 0), axis=2)).any()  # dark text on a light band
    with pytest.raises(ValueError):
        draw_box(img, (1, 2, 3))


# --------------------------------------------------------------------------- writers


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_write_png_round_trip(tmp_path):
    rgb = RNG.integers(0, 256, (9, 11, 3), np.uint8)
    p = write_png(tmp_path / "sub" / "dir" / "a.png", rgb)
    assert p == tmp_path / "sub" / "dir" / "a.png"
    np.testing.assert_array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:, :, ::-1], rgb)
    rgba = RNG.integers(0, 256, (9, 11, 4), np.uint8)
    back = cv2.imread(str(write_png(tmp_path / "b.png", rgba)), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(back, cv2.COLOR_BGRA2RGBA), rgba)
    gray16 = RNG.integers(0, 65536, (9, 11), np.uint16)
    np.testing.assert_array_equal(cv2.imread(str(write_png(tmp_path / "c.png", gray16)), cv2.IMREAD_UNCHANGED), gray16)
    with pytest.raises(ValueError):
        write_png(tmp_path / "d.png", rgb.astype(np.float32))
    assert not (tmp_path / "d.png").exists()
    assert _leftovers(tmp_path) == []


def test_written_files_get_normal_permissions(tmp_path):
    p = write_bytes(tmp_path / "x.bin", b"abc")
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_npy_and_json_round_trip(tmp_path):
    arr = RNG.random((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.load(write_npy(tmp_path / "a.npy", arr)), arr)

    @dataclasses.dataclass
    class Result:
        label: str
        score: np.float32

    obj = {
        "class": np.int64(281),
        "score": np.float32(0.1),
        "probs": np.array([0.25, np.nan], np.float32),
        "box": (np.int32(1), 2.5),
        "inf": float("inf"),
        "ok": np.bool_(True),
        "path": tmp_path / "x.png",
        "map": np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.int64(5): "numpy key",
        "result": Result("cat", np.float32(0.75)),
        "tags": {"b", "a"},
    }
    p = write_json(tmp_path / "r.json", obj)
    text = p.read_text(encoding="utf-8")
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "class": 281,
        "score": 0.1,
        "probs": [0.25, None],
        "box": [1, 2.5],
        "inf": None,
        "ok": True,
        "path": str(tmp_path / "x.png"),
        "map": [[0, 1, 2], [3, 4, 5]],
        "5": "numpy key",
        "result": {"label": "cat", "score": 0.75},
        "tags": ["a", "b"],
    }
    assert to_jsonable(np.float64(0.1)) == 0.1 and to_jsonable(np.float32(1 / 3)) == 0.33333334
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half of the")
            raise RuntimeError("disk full")
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_failure_keeps_previous_version(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "w") as f:
            f.write('{"v": 2, "trunc')
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"v": 1}
    with pytest.raises(TypeError, match="object"):
        write_json(target, {"v": 3, "bad": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_npy_failure_mid_write(tmp_path, monkeypatch):
    def broken_save(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial header")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.np, "save", broken_save)
    with pytest.raises(OSError):
        write_npy(tmp_path / "a.npy", np.zeros(1000))
    assert list(tmp_path.iterdir()) == []


def test_png_failure_at_rename(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        write_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_npy_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "ab"):
            pass
