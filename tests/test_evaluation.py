"""Tests of onnx_explain.evaluation: hand-made cases with answers known in advance."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_explain.evaluation import (
    AnnotationError,
    Box,
    auc,
    average_drop,
    best_iou,
    box_from_heatmap,
    boxes_mask,
    confidence_change,
    deletion,
    energy_pointing_game,
    evaluate,
    explanation_map,
    format_table,
    increase_in_confidence,
    insertion,
    iou,
    load_annotations,
    match_annotations,
    pointing_game_hit,
    read_boxes_csv,
    read_voc_dir,
    read_voc_xml,
    rise_blur,
    write_voc_xml,
)
from onnx_explain.evaluation.faithfulness import baseline_from_preprocess

# --------------------------------------------------------------------------- boxes / IoU


def test_iou_by_hand():
    a = Box(0, 0, 10, 10)
    b = Box(5, 5, 15, 15)
    # intersection 5 x 5 = 25, union 100 + 100 - 25 = 175
    assert iou(a, b) == pytest.approx(25 / 175)
    assert iou(a, a) == 1.0
    assert iou(a, Box(10, 0, 20, 10)) == 0.0  # touching edges do not overlap
    assert iou((0, 0, 4, 2), (2, 0, 6, 2)) == pytest.approx(4 / 12)  # tuples work too
    assert best_iou(a, [Box(20, 20, 30, 30), b, Box(0, 0, 10, 5)]) == pytest.approx(0.5)
    assert best_iou(None, [a]) == 0.0
    assert best_iou(a, []) == 0.0


def test_box_pixel_convention():
    b = Box(2, 3, 5, 7)
    assert (b.width, b.height, b.area) == (3, 4, 12)
    rows, cols = b.pixel_ranges(10, 10)
    assert (rows, cols) == (slice(3, 7), slice(2, 5))
    assert b.to_voc() == (3, 4, 5, 7)
    assert Box.from_voc(*b.to_voc()) == b
    # clipped to the image
    assert Box(-0.0, 0, 50, 50).pixel_ranges(10, 20) == (slice(0, 10), slice(0, 20))
    m = boxes_mask((6, 6), [Box(0, 0, 2, 2), Box(1, 1, 3, 3)])
    assert m.sum() == 4 + 4 - 1


# --------------------------------------------------------------------------- localization


def test_box_from_heatmap_returns_larger_blob_exactly():
    h = np.zeros((50, 60))
    h[5:15, 3:13] = 0.5  # 100 px, holds the peak
    h[9, 7] = 1.0
    h[20:40, 30:55] = 0.3  # 500 px: the largest component
    box = box_from_heatmap(h, threshold=0.15)
    assert box == Box(30, 20, 55, 40)
    # above 0.3 / 1.0 only the small blob remains
    assert box_from_heatmap(h, threshold=0.4) == Box(3, 5, 13, 15)
    # a diagonal touch joins components with 8-connectivity only
    g = np.zeros((10, 10))
    g[0:3, 0:3] = 1
    g[3:5, 3:5] = 1
    assert box_from_heatmap(g) == Box(0, 0, 5, 5)
    assert box_from_heatmap(g, connectivity=4) == Box(0, 0, 3, 3)
    assert box_from_heatmap(np.zeros((5, 5))) is None


def test_pointing_game_known_peak():
    h = np.zeros((40, 50))
    h[10, 20] = 1.0  # pixel centre (20.5, 10.5)
    assert pointing_game_hit(h, [Box(15, 5, 25, 15)])
    assert pointing_game_hit(h, [Box(0, 0, 5, 5), Box(20, 10, 21, 11)])  # the single peak pixel
    assert not pointing_game_hit(h, [Box(21, 0, 30, 40)])
    # 3 px left of a box starting at x=23.5: hit only with tolerance >= 3
    assert not pointing_game_hit(h, [Box(23.5, 0, 30, 40)], tolerance=2.9)
    assert pointing_game_hit(h, [Box(23.5, 0, 30, 40)], tolerance=3.0)
    assert not pointing_game_hit(np.zeros((4, 4)), [Box(0, 0, 4, 4)])
    assert not pointing_game_hit(h, [])


def test_energy_pointing_game_exact_fraction():
    h = np.ones((10, 10))
    assert energy_pointing_game(h, [Box(0, 0, 5, 10)]) == pytest.approx(0.5)
    # union of overlapping boxes: 25 + 25 - 4 = 46 px
    assert energy_pointing_game(h, [Box(0, 0, 5, 5), Box(3, 3, 8, 8)]) == pytest.approx(0.46)
    g = np.zeros((10, 10))
    g[2, 2] = 3.0
    g[8, 8] = 1.0
    assert energy_pointing_game(g, [Box(0, 0, 5, 5)]) == pytest.approx(0.75)
    assert energy_pointing_game(np.zeros((3, 3)), [Box(0, 0, 1, 1)]) == 0.0


# --------------------------------------------------------------------------- faithfulness


def _mass_model(reference: np.ndarray):
    """A fake model whose target probability is the image's remaining mass."""
    total = float(reference.sum())
    calls = []

    def predict(batch):
        batch = np.asarray(batch, dtype=np.float64)
        calls.append(len(batch))
        p = batch.reshape(len(batch), -1).sum(1) / total
        return np.stack([1 - p, p], axis=1)

    return predict, calls


def test_deletion_auc_analytic():
    rng = np.random.default_rng(0)
    n = 64 * 64
    img = rng.permutation(np.arange(1, n + 1, dtype=np.float64)).reshape(64, 64)
    predict, calls = _mass_model(img)
    # Removing the largest values first leaves (1 - x)^2 of the mass: AUC 1/3.
    c = deletion(img, img, predict, target=1, n_steps=100, batch_size=16)
    assert c.x[0] == 0 and c.x[-1] == 1 and len(c.x) == 101
    assert c.y[0] == pytest.approx(1.0) and c.y[-1] == pytest.approx(0.0)
    assert c.auc == pytest.approx(1 / 3, abs=1e-3)
    assert calls == [16] * 6 + [5]  # 101 step images in chunks of 16
    # Removing the smallest first leaves 1 - x^2: AUC 2/3.
    assert deletion(img, -img, predict, target=1).auc == pytest.approx(2 / 3, abs=1e-3)
    # Insertion onto an empty canvas, largest first: 1 - (1 - x)^2, AUC 2/3.
    ins = insertion(img, img, predict, target=1, canvas=0.0, batch_size=50)
    assert ins.y[0] == pytest.approx(0.0) and ins.y[-1] == pytest.approx(1.0)
    assert ins.auc == pytest.approx(2 / 3, abs=1e-3)


def test_auc_trapezoid_and_rise_formula():
    y = np.array([1.0, 0.5, 0.25, 0.0])
    rise = (y.sum() - y[0] / 2 - y[-1] / 2) / (len(y) - 1)
    assert auc(y) == pytest.approx(rise)
    assert auc([0, 1], [0, 0.5]) == pytest.approx(0.25)


def test_deletion_on_rgb_uint8_keeps_dtype_and_baseline():
    img = np.full((4, 5, 3), 200, np.uint8)
    sal = np.zeros((4, 5))
    sal[0, 0] = 1
    seen = []

    def predict(batch):
        seen.append(batch.copy())
        return np.ones((len(batch), 3)) / 3

    deletion(img, sal, predict, target=0, n_steps=20, baseline=(10, 20, 30))
    b = np.concatenate(seen)
    assert b.dtype == np.uint8 and b.shape == (21, 4, 5, 3)
    assert (b[1, 0, 0] == [10, 20, 30]).all() and (b[1, 0, 1] == 200).all()  # 1 px per step
    assert (b[-1] == [10, 20, 30]).all()
    with pytest.raises(ValueError, match="saliency shape"):
        deletion(img, np.zeros((5, 4)), predict, target=0)
    with pytest.raises(ValueError, match="out of range"):
        deletion(img, sal, predict, target=7, n_steps=2)


def test_rise_blur_is_a_blur():
    img = np.zeros((224, 224), np.float32)
    img[112, 112] = 1.0
    out = rise_blur(img)  # sigma 5 at 224 px
    assert out.sum() == pytest.approx(1.0, rel=1e-4)
    g = np.exp(-np.arange(-5, 6) ** 2 / (2 * 5.0**2))  # an 11-tap Gaussian of sigma 5
    g /= g.sum()
    assert out[112, 112] == out.max() == pytest.approx(g[5] ** 2, rel=1e-4)
    assert out[112, 117] == pytest.approx(g[5] * g[10], rel=1e-4) and out[112, 118] == 0
    assert rise_blur(np.full((30, 40, 3), 77, np.uint8)).dtype == np.uint8


def test_average_drop_and_increase():
    y = [0.8, 0.5, 0.4]
    o = [0.4, 0.6, 0.4]
    assert average_drop(y, o) == pytest.approx((0.5 + 0 + 0) / 3 * 100)
    assert increase_in_confidence(y, o) == pytest.approx(100 / 3)
    img = np.full((2, 2, 3), 100, np.uint8)
    h = np.array([[1.0, 0.5], [0.0, 0.25]])
    e = explanation_map(img, h)
    assert e[..., 0].tolist() == [[100, 50], [0, 25]]
    # with a baseline b: b + h (x - b); here b = 20
    assert explanation_map(img, h, baseline=20)[..., 1].tolist() == [[100, 60], [20, 40]]

    def predict(batch):
        m = np.asarray(batch, np.float64).mean(axis=(1, 2, 3)) / 100.0
        return np.stack([m, 1 - m], axis=1)

    y1, o1 = confidence_change(img, h, predict, target=0)
    assert y1 == pytest.approx(1.0) and o1 == pytest.approx(175 / 400)


def test_baseline_from_preprocess():
    class P:
        mean = (0.485, 0.456, 0.406)
        scale = 1 / 255
        color = "RGB"

    assert baseline_from_preprocess(P()) == pytest.approx(np.array([0.485, 0.456, 0.406]) * 255)
    P.color = "BGR"
    assert baseline_from_preprocess(P())[0] == pytest.approx(0.406 * 255)


# --------------------------------------------------------------------------- annotations

VOC = """<annotation>
  <folder>VOC2007</folder>
  <filename>000005.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object>
    <name>chair</name>
    <difficult>0</difficult>
    <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
  </object>
  <object>
    <name>chair</name>
    <difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500</xmax><ymax>375</ymax></bndbox>
  </object>
</annotation>
"""


def test_read_voc_xml_several_boxes(tmp_path):
    p = tmp_path / "000005.xml"
    p.write_text(VOC)
    ann = read_voc_xml(p)
    assert ann.filename == "000005.jpg" and (ann.width, ann.height) == (500, 375)
    assert ann.boxes == [
        Box(262, 210, 324, 339, "chair", False),
        Box(0, 0, 500, 375, "chair", True),  # VOC 1..W inclusive is the whole image
    ]
    # round trip through the writer
    write_voc_xml(tmp_path / "copy.xml", "000005.jpg", 500, 375, ann.boxes)
    assert read_voc_xml(tmp_path / "copy.xml").boxes == ann.boxes


@pytest.mark.parametrize(
    "body, message",
    [
        ("<annotation><object><bndbox>\n<xmin>1</xmin><ymin>1</ymin>\n<ymax>5</ymax></bndbox></object></annotation>",
         r"bad\.xml:1: <bndbox> has no <xmax>"),
        ("<annotation>\n<object>\n<bndbox><xmin>1</xmin><ymin>1</ymin>\n<xmax>abc</xmax><ymax>5</ymax></bndbox></object></annotation>",
         r"bad\.xml:4: <xmax> is not a number: 'abc'"),
        ("<annotation>\n<object><bndbox>\n<xmin>10</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>\n</bndbox></object>\n</annotation>",
         r"bad\.xml:2: empty or reversed box"),
        ("<annotation>\n<object>\n<name>x</name>\n</annotation>", r"bad\.xml:4: not well-formed XML"),
        ("<annotation>\n<object><name>x</name></object>\n</annotation>", r"bad\.xml:2: <object> has no <bndbox>"),
        ("<notvoc/>", r"bad\.xml:1: root element is <notvoc>"),
    ],
)
def test_read_voc_xml_malformed(tmp_path, body, message):
    p = tmp_path / "bad.xml"
    p.write_text(body)
    with pytest.raises(AnnotationError, match=message):
        read_voc_xml(p)


def test_read_boxes_csv(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("file,xmin,ymin,xmax,ymax,class\na.jpg,0,0,10,10,cat\nb.jpg,5,5,8,9\n\na.jpg,20,20,30,40,dog\n")
    anns = read_boxes_csv(p)
    assert [a.filename for a in anns] == ["a.jpg", "b.jpg"]
    assert anns[0].boxes == [Box(0, 0, 10, 10, "cat"), Box(20, 20, 30, 40, "dog")]
    assert anns[1].boxes == [Box(5, 5, 8, 9)]
    # no header, VOC convention
    q = tmp_path / "voc.csv"
    q.write_text("a.jpg,1,1,10,10\n")
    assert read_boxes_csv(q, one_based_inclusive=True)[0].boxes == [Box(0, 0, 10, 10)]
    assert load_annotations(q)[0].boxes == [Box(1, 1, 10, 10)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,xmin,ymin,xmax,ymax\na.jpg,0,0,10,10\na.jpg,0,zero,10,10\n", r"bad\.csv:3: ymin is not a number: 'zero'"),
        ("a.jpg,0,0,10\n", r"bad\.csv:1: expected 5 or 6 columns"),
        ("a.jpg,0,0,10,10\nb.jpg,5,0,3,10\n", r"bad\.csv:2: empty or reversed box"),
        ("file,xmin,ymin,xmax,ymax\n", r"bad\.csv: no boxes"),
        (",0,0,1,1\n", r"bad\.csv:1: empty file name"),
    ],
)
def test_read_boxes_csv_malformed(tmp_path, text, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        read_boxes_csv(p)


def test_match_annotations_by_filename_and_stem(tmp_path):
    d = tmp_path / "ann"
    d.mkdir()
    (d / "000005.xml").write_text(VOC)
    (d / "other.xml").write_text(VOC.replace("000005.jpg", "photo.png"))
    anns = read_voc_dir(d)
    pairs = match_annotations(["imgs/000005.jpg", "x/photo.jpg", "x/other.jpeg"], anns)
    assert [len(b) for _, b in pairs] == [2, 2, 2]  # filename, filename's stem, xml stem
    with pytest.raises(AnnotationError, match="no annotation found"):
        match_annotations(["nothing.jpg"], anns)
    assert match_annotations(["nothing.jpg"], anns, missing="skip") == []
    assert match_annotations(["nothing.jpg"], anns, missing="empty")[0][1] == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no .xml annotation files"):
        read_voc_dir(tmp_path / "empty")


# --------------------------------------------------------------------------- dataset


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_dataset_deterministic_and_in_bounds(tmp_path):
    pytest.importorskip("skimage")
    from onnx_explain.evaluation.dataset import BACKGROUNDS_A, BACKGROUNDS_B, OBJECTS_A, OBJECTS_B, build_dataset

    assert not set(OBJECTS_A) & set(OBJECTS_B) and not set(BACKGROUNDS_A) & set(BACKGROUNDS_B)
    written = build_dataset(tmp_path / "a", 6, seed=3, image_size=(120, 160))
    assert len(written) == 6
    assert len(list((tmp_path / "a" / "images").glob("*.jpg"))) == 6
    assert len(list((tmp_path / "a" / "annotations").glob("*.xml"))) == 6
    for img_path, xml_path in written:
        img = cv2.imread(str(img_path))
        assert img.shape == (120, 160, 3)
        ann = read_voc_xml(xml_path)
        assert ann.filename == img_path.name and (ann.width, ann.height) == (160, 120)
        assert len(ann.boxes) == 1 and ann.boxes[0].label in OBJECTS_A
        for b in ann.boxes:
            assert 0 <= b.xmin < b.xmax <= 160 and 0 <= b.ymin < b.ymax <= 120
    csv_anns = read_boxes_csv(tmp_path / "a" / "boxes.csv")
    assert [a.boxes for a in csv_anns] == [read_voc_xml(x).boxes for _, x in written]
    build_dataset(tmp_path / "a2", 6, seed=3, image_size=(120, 160))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "a2")
    build_dataset(tmp_path / "a3", 6, seed=4, image_size=(120, 160))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "a3")
    # the other split, several objects per image, never overlapping
    wb = build_dataset(tmp_path / "b", 4, seed=0, objects=OBJECTS_B, backgrounds=BACKGROUNDS_B,
                       image_size=(200, 200), scale_range=(0.2, 0.3), objects_per_image=(2, 3))
    for _, xml_path in wb:
        boxes = read_voc_xml(xml_path).boxes
        assert len(boxes) >= 2 and all(b.label in OBJECTS_B for b in boxes)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert iou(a, b) == 0.0
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["backgrounds"] == list(BACKGROUNDS_B)


# --------------------------------------------------------------------------- end to end


def _blob(shape, box: Box) -> np.ndarray:
    """A Gaussian bump centred on the box (a 'good' heatmap)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    cx, cy = (box.xmin + box.xmax) / 2, (box.ymin + box.ymax) / 2
    sx, sy = box.width / 4, box.height / 4
    return np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2)


def test_evaluate_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    # Four images with one bright square each on a dark noisy background.
    rng = np.random.default_rng(0)
    items = []
    truth = {}
    for i in range(4):
        h, w = 60 + 10 * i, 80
        img = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
        x0, y0 = 10 + 5 * i, 12
        box = Box(x0, y0, x0 + 24, y0 + 20, "square")
        img[y0 : y0 + 20, x0 : x0 + 24] = 230
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), img)
        items.append((p, [box]))
        truth[p.name] = box

    def explain_fn(paths, method):
        out = []
        for p in paths:
            img = cv2.imread(str(p))
            box = truth[Path(p).name]
            if method == "good":
                hm = _blob(img.shape[:2], box)
            else:  # a corner, away from the object
                hm = _blob(img.shape[:2], Box(0, 0, 12, 10))
            out.append((hm / hm.max(), 1, 0.9))
        return out

    def predict_fn(images):
        # class 1 = "there is a bright square": share of bright pixels left, scaled
        images = np.asarray(images)
        bright = (images.astype(np.float64).mean(axis=3) > 150).mean(axis=(1, 2))
        p1 = np.clip(bright / (24 * 20 / (60 * 80)), 0, 1)
        return np.stack([1 - p1, p1], axis=1)

    seen = []
    res = evaluate(explain_fn, predict_fn, items, ["good", "bad"], out_dir=tmp_path / "out", n_steps=20,
                   batch_size=8, explain_batch_size=3, progress=lambda d, t, m: seen.append((d, t, m)))
    assert seen[-1][:2] == (8, 8) and len(seen) == 8
    good, bad = res.summary["good"], res.summary["bad"]
    assert good["n_images"] == 4 and good["localization_accuracy"] == 1.0 and good["pointing_game"] == 1.0
    assert bad["localization_accuracy"] == 0.0 and bad["pointing_game"] == 0.0
    assert good["energy_pointing_game"] > bad["energy_pointing_game"]
    assert good["deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > bad["insertion_auc"]
    assert good["average_drop"] < bad["average_drop"]

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"good", "bad"} and summary["meta"]["n_steps"] == 20
    assert summary["methods"]["good"]["localization_accuracy"] == 1.0
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["method"] for r in rows} == {"good", "bad"}
    assert all(r["localized"] == "1" for r in rows if r["method"] == "good")
    for name in ("curves.png", "boxes.png"):
        png = cv2.imread(str(out / name))
        assert png is not None and png.shape[0] > 100
    table = (out / "table.txt").read_text()
    assert "deletion AUC" in table and "good" in table and "bad" in table
    assert table == format_table(res.summary)
    assert res.curves["good"]["deletion"].shape == (21,)

    # heatmaps must come at the original resolution
    with pytest.raises(ValueError, match="original resolution"):
        evaluate(lambda ps, m: [(np.zeros((5, 5)), 0, 1.0) for _ in ps], predict_fn, items[:1], ["x"])


def test_runtime_import_stays_light():
    code = (
        "import sys, onnx_explain.evaluation as e;"
        "bad = [m for m in ('torch', 'matplotlib', 'skimage') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
