"""Preprocessing and labels given to `augment` on the command line, checked with numbers.

The model is conftest's tiny plain model (input "input" of shape batch x 3 x 32 x 32,
4 classes); the photo is scikit-image's chelsea (300 x 451).  Every tensor is compared
with one built by hand with OpenCV (INTER_AREA: each photo shrinks), and the probabilities
with the plain model run directly in ONNX Runtime on that hand-built tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_explain import contract
from onnx_explain.command.cli import main
from onnx_explain.contract import Preprocess
from onnx_explain.explainer import Explainer
from onnx_explain.labels import labels_from_metadata, parse_labels
from onnx_explain.preprocess import Geometry, preprocess

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_meta(path: Path) -> contract.ExplainMetadata:
    model = onnx.load(str(path), load_external_data=False)
    return contract.ExplainMetadata.from_props({p.key: p.value for p in model.metadata_props})


def rgb_of(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def plain_probabilities(tiny, x_chw: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(tiny.plain), providers=["CPUExecutionProvider"])
    z = sess.run(None, {"input": x_chw[None].astype(np.float32)})[0][0].astype(np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def with_metadata(tiny, tmp_path: Path, name: str, props: dict[str, str]) -> Path:
    model = onnx.load(str(tiny.plain))
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------- resize shorter side


def test_resize_shorter_then_center_crop(tiny, photos, tmp_path):
    out = tmp_path / "crop.onnx"
    r = invoke("augment", tiny.plain, "-o", out, "--resize-shorter", 40)
    assert r.exit_code == 0, r.output
    pre = read_meta(out).preprocess
    assert (pre.resize, pre.resize_shorter, pre.size) == ("center_crop", 40, (32, 32))
    # JSON as stored: the new keys have their defaults
    stored = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["onnx_explain.preprocess"])
    assert stored["resize_shorter"] == 40 and stored["pad_align"] == "center" and stored["pad_value"] == 0.0

    # by hand: 300 x 451 -> shorter side 40, longer int(40 * 451 / 300) = 60 (torchvision's
    # rule), INTER_AREA; centre 32 x 32 from row round(8 / 2) = 4, column round(28 / 2) = 14
    rgb = rgb_of(photos[0])
    assert rgb.shape[:2] == (300, 451)
    small = cv2.resize(rgb, (60, 40), interpolation=cv2.INTER_AREA)
    hand = ((small[4:36, 14:46] / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    x, geo = preprocess(rgb, pre)
    np.testing.assert_allclose(x, hand, atol=1e-5)
    assert geo == Geometry((300, 451), (32, 32), (40, 60), (-4, -14), "center_crop")

    with Explainer(out, device="cpu") as ex:
        (p,) = ex.predict([photos[0]], top_k=tiny.classes)
    np.testing.assert_allclose(np.array(p.probabilities), np.sort(plain_probabilities(tiny, hand))[::-1],
                               rtol=1e-4, atol=1e-6)


def test_resize_shorter_conflicts_and_bounds(tiny, tmp_path):
    out = tmp_path / "x.onnx"
    r = invoke("augment", tiny.plain, "-o", out, "--resize-shorter", 40, "--resize", "letterbox")
    assert r.exit_code == 2 and "--resize-shorter" in r.output and "Traceback" not in r.output
    r = invoke("augment", tiny.plain, "-o", out, "--resize-shorter", 0)
    assert r.exit_code == 2 and "--resize-shorter" in r.output
    assert not out.exists()


# ----------------------------------------------------------------------------- padding


def test_letterbox_topleft_grey_padding(tiny, photos, tmp_path):
    out = tmp_path / "ocr.onnx"
    r = invoke("augment", tiny.plain, "-o", out, "--resize", "letterbox", "--pad-value", 127, "--pad-align", "topleft")
    assert r.exit_code == 0, r.output
    pre = read_meta(out).preprocess
    assert (pre.resize, pre.pad_value, pre.pad_align) == ("letterbox", 127.0, "topleft")

    # by hand: scale min(32 / 300, 32 / 451) -> 21 x 32 (round(21.29)), in the top-left
    # corner; rows 21..31 are grey 127
    rgb = rgb_of(photos[0])
    canvas = np.full((32, 32, 3), 127.0)
    canvas[:21] = cv2.resize(rgb, (32, 21), interpolation=cv2.INTER_AREA)
    hand = ((canvas / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    x, geo = preprocess(rgb, pre)
    np.testing.assert_allclose(x, hand, atol=1e-5)
    assert geo.offset == (0, 0) and geo.resized_size == (21, 32) and geo.content_box == (0, 0, 32, 21)

    with Explainer(out, device="cpu") as ex:
        (e,) = ex.explain([photos[0]], method="gradcam")
        (p,) = ex.predict([photos[0]], top_k=tiny.classes)
    np.testing.assert_allclose(np.array(p.probabilities), np.sort(plain_probabilities(tiny, hand))[::-1],
                               rtol=1e-4, atol=1e-6)
    # the heatmap comes back on the photo through the same geometry (content rows only)
    assert e.geometry == geo and e.heatmap.shape == (300, 451)
    from onnx_explain.methods import normalize01

    np.testing.assert_allclose(e.heatmap, np.clip(geo.to_original(normalize01(e.raw_map)), 0, 1), atol=1e-6)


def test_per_channel_pad_value_in_the_models_channel_order(tiny, photos, tmp_path):
    out = tmp_path / "bgr.onnx"
    r = invoke("augment", tiny.plain, "-o", out, "--resize", "letterbox", "--color", "BGR",
               "--pad-value", "10,20,30", "--scale", 1, "--mean", "0,0,0", "--std", "1,1,1")
    assert r.exit_code == 0, r.output
    pre = read_meta(out).preprocess
    assert pre.pad_value == (10.0, 20.0, 30.0) and pre.pad_align == "center"
    rgb = rgb_of(photos[0])
    x, geo = preprocess(rgb, pre)
    # centred: (32 - 21) // 2 = 5 rows above, 6 below
    assert geo.offset == (5, 0)
    small = cv2.resize(rgb, (32, 21), interpolation=cv2.INTER_AREA)
    for c, value in enumerate((10, 20, 30)):  # channel 0 is blue: the tensor's order
        np.testing.assert_array_equal(x[c, :5], value)
        np.testing.assert_array_equal(x[c, 26:], value)
        np.testing.assert_array_equal(x[c, 5:26], small[:, :, 2 - c])


@pytest.mark.parametrize("args,words", [
    (["--pad-value", "300"], ["--pad-value", "0..255"]),
    (["--pad-value", "1,2"], ["--pad-value"]),
    (["--pad-value", "grey"], ["grey"]),
    (["--pad-align", "topleft"], ["stretch"]),  # the default policy never pads
    (["--resize", "stretch", "--pad-value", "114"], ["stretch"]),
    (["--pad-align", "middle"], ["--pad-align"]),
    (["--size", "abc"], ["--size"]),
    (["--size", "0x32"], ["--size"]),
    (["--mean", "0.5,0.5"], ["mean"]),
])
def test_bad_preprocessing_options_are_usage_errors(tiny, tmp_path, args, words):
    out = tmp_path / "x.onnx"
    r = invoke("augment", tiny.plain, "-o", out, *args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output, (w, r.output)
    assert not out.exists()


def test_old_preprocess_json_reads_back_unchanged():
    old = ('{"size": [224, 224], "layout": "NCHW", "color": "RGB", "scale": 0.00392156862745098, '
           '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "letterbox", '
           '"resize_shorter": null, "pad_value": 114}')
    pre = Preprocess.from_json(old)
    assert pre == Preprocess(resize="letterbox", pad_value=114.0)
    assert pre.pad_align == "center" and pre.pad_values == (114.0,)
    again = Preprocess(pad_value=(1.0, 2.0, 3.0), pad_align="topleft")
    assert Preprocess.from_json(again.to_json()) == again
    assert json.loads(Preprocess().to_json())["pad_value"] == 0.0  # one value stays a number


# ----------------------------------------------------------------------------- mapping back


@pytest.mark.parametrize("align,oy", [("center", 4), ("topleft", 0)])
def test_letterbox_maps_back_with_numbers(align, oy):
    """A 20 x 40 image letterboxed into 16 x 16: scale 0.4, 8 x 16 content at row ``oy``."""
    pre = Preprocess(size=(16, 16), resize="letterbox", pad_align=align, scale=1.0, mean=(0,) * 3, std=(1,) * 3)
    x, geo = preprocess(np.zeros((20, 40, 3), np.uint8), pre)
    assert geo == Geometry((20, 40), (16, 16), (8, 16), (oy, 0), "letterbox")
    assert geo.content_box == (0, oy, 16, oy + 8)

    # a map on the input grid holding each input row's centre: original row i (centre at
    # input row (i + .5) * .4 + oy) reads that value, clamped to the content rows' centres
    ramp = np.repeat(np.arange(16, dtype=np.float32)[:, None] + 0.5, 16, axis=1)
    back = geo.to_original(ramp)
    expected = np.clip((np.arange(20) + 0.5) * 0.4 + oy, oy + 0.5, oy + 7.5)
    np.testing.assert_allclose(back[:, 0], expected, atol=1e-6)
    np.testing.assert_allclose(back[:, 17], expected, atol=1e-6)
    assert back[0, 0] == pytest.approx(oy + 0.5) and back[10, 0] == pytest.approx(oy + 4.2)
    assert back[19, 0] == pytest.approx(oy + 7.5)  # (19.5 * .4 = 7.8) clamped: padding never read

    # a 4 x 4 feature map (stride 4) holding its row index: cells 0, 1 cover the content
    # rows when topleft, 1, 2 when centred; row i samples at ((i + .5) * .4 + oy) / 4 - .5
    cells = np.repeat(np.arange(4, dtype=np.float32)[:, None], 4, axis=1)
    lo = (oy + 2) // 4  # first cell whose centre is on the content
    coarse = geo.to_original(cells)[:, 0]
    np.testing.assert_allclose(coarse, np.clip(((np.arange(20) + 0.5) * 0.4 + oy) / 4 - 0.5, lo, lo + 1), atol=1e-6)

    # boxes: the content box is the whole photo; an inner box scales by 1 / 0.4
    assert geo.box_to_original((0, oy, 16, oy + 8)) == (0.0, 0.0, 40.0, 20.0)
    assert geo.box_to_original((4, oy + 2, 8, oy + 6)) == pytest.approx((10.0, 5.0, 20.0, 15.0))
    # the pixels: content then padding, where the alignment says
    assert (x[:, oy : oy + 8] == 0).all()
    assert x.shape == (3, 16, 16)


def test_center_crop_with_padding_topleft_maps_back():
    """resize_shorter below the input size pads; topleft puts the padding below."""
    rgb = np.random.default_rng(3).integers(0, 256, (10, 20, 3), np.uint8)
    pre = Preprocess(size=(16, 16), resize="center_crop", resize_shorter=8, pad_align="topleft", pad_value=9,
                     scale=1.0, mean=(0,) * 3, std=(1,) * 3)
    x, geo = preprocess(rgb, pre)
    assert geo == Geometry((10, 20), (16, 16), (8, 16), (0, 0), "center_crop")
    small = cv2.resize(rgb, (16, 8), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(x.transpose(1, 2, 0)[:8], small)
    assert (x[:, 8:] == 9).all()
    ones = geo.to_original(np.ones((16, 16), np.float32))
    assert (ones == 1).all()  # nothing of the photo was cut away
    assert geo.box_to_original((0, 0, 16, 8)) == (0.0, 0.0, 20.0, 10.0)


# ----------------------------------------------------------------------------- labels


def test_labels_parsed_from_the_usual_formats():
    assert parse_labels('["cat", "cup"]') == ["cat", "cup"]
    assert parse_labels('{"1": "cup", "0": "cat"}') == ["cat", "cup"]
    assert parse_labels("{0: 'person', 1: 'bicycle'}") == ["person", "bicycle"]  # Ultralytics
    assert parse_labels("tench, Tinca tinca\ngoldfish\n\n") == ["tench, Tinca tinca", "goldfish"]
    assert parse_labels("{0: 'a', 2: 'c'}") == ["{0: 'a', 2: 'c'}"]  # a gap: not an index map
    key, names, notes = labels_from_metadata({"Names": "a,b,c"}, 3)
    assert (key, names, notes) == ("Names", ["a", "b", "c"], [])
    key, names, notes = labels_from_metadata({"classes": "a\nb", "names": '["x", "y", "z"]'}, 3)
    assert key == "names" and names == ["x", "y", "z"] and "'classes' holds 2 names for 3 classes" in notes[0]


@pytest.mark.parametrize("key,value", [
    ("names", "{0: 'cat', 1: 'cup', 2: 'person', 3: 'rocket'}"),
    ("labels", "cat\ncup\nperson\nrocket\n"),
    ("class_names", '["cat", "cup", "person", "rocket"]'),
])
def test_labels_from_the_models_own_metadata(tiny, tmp_path, key, value):
    src = with_metadata(tiny, tmp_path, "foreign.onnx", {key: value, "author": "someone"})
    out = tmp_path / "explain.onnx"
    r = invoke("augment", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert f"4 class names from the model's metadata key '{key}'" in r.stdout
    assert read_meta(out).labels == ["cat", "cup", "person", "rocket"]
    with Explainer(out, device="cpu") as ex:
        assert ex.labels == ["cat", "cup", "person", "rocket"]
    # a --labels file wins over the metadata
    mine = tmp_path / "mine.txt"
    mine.write_text("a\nb\nc\nd\n")
    r = invoke("augment", src, "-o", out, "--labels", mine)
    assert r.exit_code == 0 and "metadata key" not in r.stdout
    assert read_meta(out).labels == ["a", "b", "c", "d"]


def test_metadata_labels_of_the_wrong_count_are_not_used(tiny, tmp_path):
    src = with_metadata(tiny, tmp_path, "foreign.onnx", {"names": "{0: 'cat', 1: 'dog'}"})
    out = tmp_path / "explain.onnx"
    r = invoke("augment", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert "'names' holds 2 names for 4 classes" in r.stderr
    assert read_meta(out).labels is None


@pytest.mark.parametrize("text,count", [("a\nb\nc\n", 3), ('["a", "b", "c", "d", "e"]', 5)])
def test_labels_file_of_the_wrong_count_is_an_error(tiny, tmp_path, text, count):
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    out = tmp_path / "out" / "explain.onnx"
    r = invoke("augment", tiny.plain, "-o", out, "--labels", labels)
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.strip()]
    assert line.startswith("error:") and str(labels) in line
    assert f"{count} labels" in line and f"{tiny.classes} classes" in line
    assert not out.parent.exists()


def test_labels_when_the_file_declares_no_class_count(tiny, tmp_path):
    """No output shape in the file: the count is checked on the augmented model, before writing."""
    model = onnx.load(str(tiny.plain))
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model.metadata_props.add(key="names", value="{0: 'cat', 1: 'cup', 2: 'person', 3: 'rocket'}")
    src = tmp_path / "noshape.onnx"
    onnx.save(model, str(src))
    out = tmp_path / "explain.onnx"
    r = invoke("augment", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert "4 class names from the model's metadata key 'names'" in r.stdout
    assert read_meta(out).labels == ["cat", "cup", "person", "rocket"]
    out.unlink()
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    r = invoke("augment", src, "-o", out, "--labels", labels)
    assert r.exit_code == 2 and f"{labels}: 3 labels" in r.output and "4 classes" in r.output
    assert not out.exists()


# ----------------------------------------------------------------------------- --size


def test_size_contradicting_a_fixed_input_is_an_error(tiny, tmp_path):
    out = tmp_path / "explain.onnx"
    r = invoke("augment", tiny.plain, "-o", out, "--size", "64x48")
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.strip()]
    assert "'input'" in line and "64x48" in line and "32x32" in line and "[batch, 3, 32, 32]" in line
    assert "Traceback" not in r.output and not out.exists()
    # the size it has is fine
    r = invoke("augment", tiny.plain, "-o", out, "--size", "32")
    assert r.exit_code == 0, r.output
    assert read_meta(out).preprocess.size == (32, 32)


def test_size_for_a_dynamic_input_is_passed_on(tiny, tmp_path, monkeypatch):
    """Dynamic height/width: --size is the preprocessing size, handed to the augmenter."""
    model = onnx.load(str(tiny.plain))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    src = tmp_path / "dynamic.onnx"
    onnx.save(model, str(src))

    import onnx_explain.augment as augment

    seen = {}

    def fake_augment(plain, **kwargs):
        seen.update(kwargs)
        return onnx.load(str(tiny.explain))

    monkeypatch.setattr(augment, "augment_model", fake_augment)
    out = tmp_path / "explain.onnx"
    r = invoke("augment", src, "-o", out, "--size", "48x64", "--resize-shorter", 56)
    assert r.exit_code == 0, r.output
    pre = seen["preprocess"]
    assert pre.size == (48, 64) and pre.layout == "NCHW"
    assert (pre.resize, pre.resize_shorter) == ("center_crop", 56)
    assert out.is_file()


def test_assumed_preprocessing_is_said(tiny, tmp_path):
    """A file with no preprocessing of its own, augmented with no preprocessing flags: the
    command says what it assumed; given a flag, or a file that carries it, it says nothing."""
    bare = onnx.load(str(tiny.plain))
    del bare.metadata_props[:]
    src = tmp_path / "bare.onnx"
    onnx.save(bare, str(src))
    r = invoke("augment", src, "-o", tmp_path / "a.onnx")
    assert r.exit_code == 0, r.output
    (note,) = [ln for ln in r.output.splitlines() if ln.startswith("note:")]
    assert str(src) in note and "scale 0.00392157" in note and "[0.485, 0.456, 0.406]" in note and "--mean" in note
    assert read_meta(tmp_path / "a.onnx").preprocess.mean == (0.485, 0.456, 0.406)  # what it said
    r = invoke("augment", src, "-o", tmp_path / "b.onnx", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
    assert r.exit_code == 0 and "note:" not in r.output, r.output
    carrying = onnx.load(str(src))  # as our exporter writes it
    carrying.metadata_props.add(key="onnx_explain.preprocess", value=contract.Preprocess(size=(32, 32)).to_json())
    onnx.save(carrying, str(tmp_path / "carrying.onnx"))
    r = invoke("augment", tmp_path / "carrying.onnx", "-o", tmp_path / "c.onnx")
    assert r.exit_code == 0 and "note:" not in r.output, r.output
