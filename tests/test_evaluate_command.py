"""`onnx-explain make-evalset` and `onnx-explain evaluate` end to end, on a tiny CNN.

The figures the command prints and writes are checked against an independent
computation in this file: boxes parsed from the VOC XML here, the model run through
ONNX Runtime directly with the preprocessing re-done by hand, IoU / pointing game /
deletion AUC recomputed with numpy and scipy from the same heatmaps.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from scipy import ndimage

from onnx_explain.command.cli import main

LABELS = ["cat", "coffee cup", "motorcycle", "space shuttle", "rocket"]  # split "a"'s objects, in words
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
SIZE = 64
STEPS = 8


def _invoke(args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from torch import nn

    from onnx_explain.augment import augment_model

    root = tmp_path_factory.mktemp("evalcmd")
    r = _invoke(["make-evalset", root / "set", "-n", 6, "--seed", 3])
    assert r.exit_code == 0, r.output
    assert "wrote 6 images" in r.stdout

    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            )
            self.fc = nn.Linear(16, len(LABELS))

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    model = Tiny().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
                                opset_version=18, verbose=False)
    explain = augment_model(program.model_proto, input_gradients=True, guided=True, gradcam=True, labels=LABELS)
    path = root / "tiny.explain.onnx"
    onnx.save(explain, str(path))
    return root, path


def _voc_boxes(xml: Path) -> list[tuple[float, float, float, float, str]]:
    """VOC 1-based inclusive -> 0-based, exclusive maximum."""
    out = []
    for obj in ET.parse(xml).getroot().iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append((x0 - 1, y0 - 1, x1, y1, obj.find("name").text))
    return out


def _box_of(hm: np.ndarray, threshold: float = 0.15):
    mask = hm >= threshold * hm.max()
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())[1:]
    ys, xs = np.nonzero(lab == 1 + int(np.argmax(sizes)))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class _Model:
    """The explain model's logits through ORT directly, preprocessing done by hand."""

    def __init__(self, path: Path):
        self.s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def probs(self, images: np.ndarray) -> np.ndarray:
        x = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in images]).astype(np.float32)
        x = ((x / 255.0 - MEAN) / STD).astype(np.float32).transpose(0, 3, 1, 2)
        logits = self.s.run(["logits"], {"input": x, "target": np.full(len(x), -1, np.int64)})[0].astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def _deletion_auc(model: _Model, image: np.ndarray, hm: np.ndarray, target: int) -> float:
    h, w = hm.shape
    order = np.argsort(-hm.ravel(), kind="stable")
    counts = np.rint(np.arange(STEPS + 1) * (h * w / STEPS)).astype(int)
    baseline = np.rint(MEAN * 255).astype(np.uint8)  # what the normalisation maps to 0
    steps = []
    for k in counts:
        im = image.reshape(-1, 3).copy()
        im[order[:k]] = baseline
        steps.append(im.reshape(image.shape))
    y = model.probs(np.stack(steps))[:, target]
    return float(np.trapezoid(y, counts / (h * w)))


def test_evaluate_matches_independent_computation(setup):
    from onnx_explain.explainer import Explainer

    root, model_path = setup
    images, anns, out = root / "set" / "images", root / "set" / "annotations", root / "out"
    r = _invoke(["evaluate", model_path, "--images", images, "--boxes", anns, "-m", "cam,gradcam",
                 "--steps", STEPS, "--out", out, "--device", "cpu", "--threads", 2])
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if line.startswith("metric"))
    assert header.split()[-2:] == ["cam", "gradcam"]
    for label in ("mean IoU", "pointing game accuracy", "deletion AUC", "insertion AUC", "average drop %"):
        assert label in r.stdout
    for name in ("summary.json", "per_image.csv", "table.txt", "curves.png", "boxes.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["failed"] == [] and summary["meta"]["target"] == "top1"
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 12

    paths = sorted(images.glob("*.jpg"))
    model = _Model(model_path)
    with Explainer(model_path, device="cpu") as ex:
        for method in ("cam", "gradcam"):
            explained = ex.explain(paths, method=method)
            ious, hits, dels = [], [], []
            for p, e in zip(paths, explained):
                image = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                gts = _voc_boxes(anns / (p.stem + ".xml"))
                hm = e.heatmap.astype(np.float64)
                assert hm.shape == image.shape[:2]
                pred = _box_of(hm)
                ious.append(max(_iou(pred, g) for g in gts))
                r0, c0 = np.unravel_index(int(np.argmax(hm)), hm.shape)
                hits.append(any(g[0] <= c0 + 0.5 <= g[2] and g[1] <= r0 + 0.5 <= g[3] for g in gts))
                target = int(np.argmax(model.probs(image[None])[0]))
                assert target == e.target_class
                dels.append(_deletion_auc(model, image, hm, target))
                row = next(r for r in rows if r["method"] == method and Path(r["image"]).name == p.name)
                assert float(row["iou"]) == pytest.approx(ious[-1], abs=1e-5)
                assert row["pointing_hit"] == ("1" if hits[-1] else "0")
                assert float(row["deletion_auc"]) == pytest.approx(dels[-1], abs=2e-5)
                assert int(row["target_class"]) == target
            s = summary["methods"][method]
            assert s["n_images"] == 6
            assert s["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-6)
            assert s["pointing_game"] == pytest.approx(np.mean(hits), abs=1e-9)
            assert s["deletion_auc"] == pytest.approx(np.mean(dels), abs=2e-5)
            # the printed table shows the same figures
            line = next(line for line in r.stdout.splitlines() if line.startswith("mean IoU"))
            col = ["cam", "gradcam"].index(method) - 2
            assert float(line.split()[col]) == pytest.approx(np.mean(ious), abs=5e-4)


def test_corrupt_image_is_reported_and_the_rest_evaluated(setup):
    root, model_path = setup
    images = root / "with_bad"
    shutil.copytree(root / "set" / "images", images)
    good = (images / "img_0000.jpg").read_bytes()
    (images / "broken.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    out = root / "out_bad"
    r = _invoke(["evaluate", model_path, "--images", images, "--boxes", root / "set" / "boxes.csv", "-m", "gradcam",
                 "--steps", 4, "--out", out, "--device", "cpu", "--json"])
    assert r.exit_code == 1, r.output
    assert "broken.jpg" in r.stderr
    doc = json.loads(r.stdout)  # stdout is the JSON document only
    assert doc["meta"]["n_images"] == 6
    assert [Path(f["file"]).name for f in doc["meta"]["failed"]] == ["broken.jpg"]
    assert doc["methods"]["gradcam"]["n_images"] == 6
    assert json.loads((out / "summary.json").read_text())["meta"]["failed"] == doc["meta"]["failed"]


def test_annotated_target_and_label_errors(setup):
    root, model_path = setup
    set_dir = root / "set"
    out = root / "out_annotated"
    r = _invoke(["evaluate", model_path, "--images", set_dir / "images", "--boxes", set_dir / "annotations",
                 "-m", "gradcam", "--steps", 2, "--out", out, "--target", "annotated", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    want = {}
    for xml in (set_dir / "annotations").glob("*.xml"):
        label = _voc_boxes(xml)[0][4]
        want[xml.stem] = LABELS.index(label.replace("_", " "))
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert {Path(r["image"]).stem: int(r["target_class"]) for r in rows} == want

    # A label the model does not know: one line naming the annotation file, exit 2, nothing written.
    bad = root / "bad_labels.csv"
    bad.write_text("file,xmin,ymin,xmax,ymax,class\nimg_0000.jpg,10,10,50,50,zebra\n")
    r = _invoke(["evaluate", model_path, "--images", set_dir / "images", "--boxes", bad, "--target", "annotated",
                 "--out", root / "never", "--device", "cpu"])
    assert r.exit_code == 2
    assert "bad_labels.csv" in r.stderr and "'zebra'" in r.stderr
    assert not (root / "never").exists()

    r = _invoke(["evaluate", model_path, "--images", set_dir / "images", "--boxes", set_dir / "annotations",
                 "--target", "7", "--out", root / "never", "--device", "cpu"])
    assert r.exit_code == 2 and "out of range" in r.stderr


def test_split_b_is_disjoint(tmp_path):
    from onnx_explain.evaluation.dataset import build_split

    assert build_split(tmp_path / "b", n_images=2, seed=0, split="b") == 2
    manifest = json.loads((tmp_path / "b" / "dataset.json").read_text())
    from onnx_explain.evaluation.dataset import BACKGROUNDS_A, OBJECTS_A

    assert manifest["split"] == "b"
    assert not set(manifest["objects"]) & set(OBJECTS_A)
    assert not set(manifest["backgrounds"]) & set(BACKGROUNDS_A)
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == ["heldout_0000.jpg", "heldout_0001.jpg"]
    with pytest.raises(ValueError, match="unknown split"):
        build_split(tmp_path / "c", n_images=1, split="c")
