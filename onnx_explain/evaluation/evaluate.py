"""Running every metric over an annotated image set, for several explanation methods.

The model-specific parts are plugged in as callables, so this module knows nothing
about ONNX sessions:

* ``explain_fn(paths, method) -> [(heatmap, target_class, prob), ...]``: one entry per
  path; ``heatmap`` is ``H x W`` **at the original image's resolution**, in [0, 1];
  ``target_class`` the class explained; ``prob`` its probability.
* ``predict_fn(images) -> probs``: ``images`` a sequence of ``H x W x 3`` RGB uint8
  images (passed as one stacked ``N x H x W x 3`` array; all the same size within a
  call), ``probs`` an ``N x classes`` array of probabilities. It does the model's own
  preprocessing (resize, normalisation) itself.

Where the faithfulness metrics are computed
-------------------------------------------
Deletion, insertion and the Grad-CAM++ explanation maps are made **in original image
space**: pixels of the RGB uint8 image are removed/inserted in the order of the
original-resolution heatmap, and every step image goes through ``predict_fn`` (and so
through the model's preprocessing). This keeps one heatmap per image for every metric
and works with any preprocessing (stretch, centre crop, letterbox). The fraction on
the x axis is a fraction of the original image's pixels. ``baseline`` is the pixel
value deleted pixels take (and the "zero" of the explanation map); the default 0 is
black, and :func:`~onnx_explain.evaluation.faithfulness.baseline_from_preprocess`
gives the value that the preprocessing maps to 0 — the substrate RISE and Grad-CAM++
used in the normalised input space (the same up to the resampling of the resize).

Cost: with ``faithfulness`` each image costs ``2 * (n_steps + 1) + 2`` images through
``predict_fn`` per method (deletion, insertion, Y_c and O_c), plus one ``explain_fn``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .boxes import Box
from .faithfulness import confidence_change, deletion, insertion
from .localization import best_iou, box_from_heatmap, energy_pointing_game, pointing_game_hit
from .report import ImageRecord, atomic_write, format_table, summarize, summary_to_json, write_csv

__all__ = ["EvaluationResult", "evaluate", "load_rgb"]

ExplainFn = Callable[[list, str], Sequence[tuple]]
PredictFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int, int, str], None]


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` RGB uint8 (OpenCV; EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate` measured.

    ``records``: one :class:`ImageRecord` per (method, image); ``summary``: per-method
    aggregates (see :func:`~onnx_explain.evaluation.report.summarize`); ``curves``:
    ``{method: {"x", "deletion", "insertion"}}`` mean curves on the nominal grid
    ``x = i / n_steps``; ``meta``: the settings; ``files``: what was written.
    """

    records: list[ImageRecord]
    summary: dict[str, dict]
    curves: dict[str, dict[str, np.ndarray]]
    meta: dict
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.summary, self.meta.get("iou_threshold", 0.5))

    def to_json(self) -> str:
        return summary_to_json(self.summary, self.meta)


def _check_heatmap(hm, image: np.ndarray, method: str, path) -> np.ndarray:
    hm = np.asarray(hm, dtype=np.float64)
    if hm.ndim == 3 and hm.shape[0] == 1:
        hm = hm[0]
    if hm.shape != image.shape[:2]:
        raise ValueError(
            f"{path}: method {method!r} returned a heatmap of shape {hm.shape}, but the image is "
            f"{image.shape[0]} x {image.shape[1]}: heatmaps must be at the original resolution"
        )
    if not np.all(np.isfinite(hm)):
        raise ValueError(f"{path}: method {method!r} returned a heatmap with NaN or infinite values")
    lo, hi = float(hm.min()), float(hm.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{path}: method {method!r} returned a heatmap in [{lo:g}, {hi:g}], expected [0, 1]")
    return np.clip(hm, 0.0, 1.0)


def evaluate(
    explain_fn: ExplainFn,
    predict_fn: PredictFn | None,
    images_and_boxes: Sequence[tuple[str | Path, Sequence[Box]]],
    methods: Sequence[str],
    *,
    out_dir: str | Path | None = None,
    threshold: float = 0.15,
    iou_threshold: float = 0.5,
    pointing_tolerance: float = 0.0,
    faithfulness: bool = True,
    n_steps: int = 100,
    baseline=0.0,
    blur_sigma: float | None = None,
    batch_size: int = 16,
    explain_batch_size: int = 8,
    load_image: Callable[[Path], np.ndarray] = load_rgb,
    progress: Progress | None = None,
    plots: bool = True,
    n_plot_examples: int = 4,
) -> EvaluationResult:
    """Measure localization and faithfulness of each method over the image set.

    ``images_and_boxes``: ``[(image_path, [Box, ...]), ...]`` (see
    :func:`~onnx_explain.evaluation.boxes.match_annotations`); an image with no box
    counts only in the faithfulness metrics. Per image and method this records the
    box found from the heatmap (``threshold`` of its maximum, largest component), its
    best IoU and whether it reaches ``iou_threshold``, the pointing game hit (with
    ``pointing_tolerance`` px), the energy pointing game, and when ``faithfulness``:
    deletion and insertion AUCs (``n_steps`` steps, ``batch_size`` step images per
    ``predict_fn`` call) and Grad-CAM++'s ``Y_c``/``O_c``.

    ``progress(done, total, method)`` is called after each (image, method). With
    ``out_dir`` the results are written at the end, each file atomically:
    ``summary.json``, ``per_image.csv``, ``table.txt``, and with ``plots``
    ``curves.png`` (faithfulness only) and ``boxes.png`` (the first
    ``n_plot_examples`` images).
    """
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("no explanation method to evaluate")
    items = [(Path(p), list(b)) for p, b in images_and_boxes]
    if not items:
        raise ValueError("no images to evaluate")
    if faithfulness and predict_fn is None:
        raise ValueError("faithfulness metrics need predict_fn (or pass faithfulness=False)")
    if out_dir is not None and plots:
        from . import plots as _plots  # fail now, not after the long run

        _plots._figure(1, 1)
    explain_batch_size = max(1, int(explain_batch_size))

    records: list[ImageRecord] = []
    sums = {m: {"deletion": np.zeros(n_steps + 1), "insertion": np.zeros(n_steps + 1), "n": 0} for m in methods}
    examples: list[dict] = []
    total = len(items) * len(methods)
    done = 0
    for lo in range(0, len(items), explain_batch_size):
        batch = items[lo : lo + explain_batch_size]
        paths = [p for p, _ in batch]
        images = [np.asarray(load_image(p)) for p in paths]
        for p, im in zip(paths, images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"{p}: load_image must return H x W x 3 uint8 RGB, got {im.dtype} {im.shape}")
        keep = [k for k in range(len(batch)) if lo + k < n_plot_examples]
        for k in keep:
            if len(examples) <= lo + k:
                examples.append({"image": images[k], "gt_boxes": batch[k][1], "heatmaps": {}, "title": paths[k].name})
        for method in methods:
            out = list(explain_fn(paths, method))
            if len(out) != len(paths):
                raise ValueError(f"explain_fn returned {len(out)} results for {len(paths)} images (method {method!r})")
            for k, ((path, gts), image, res) in enumerate(zip(batch, images, out)):
                try:
                    hm, target, prob = res
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{path}: explain_fn must return (heatmap, target_class, prob) per image (method {method!r})"
                    ) from None
                hm = _check_heatmap(hm, image, method, path)
                target = int(target)
                pred = box_from_heatmap(hm, threshold)
                if gts:
                    i = best_iou(pred, gts)
                    loc = dict(
                        iou=i,
                        localized=i >= iou_threshold,
                        pointing_hit=pointing_game_hit(hm, gts, pointing_tolerance),
                        energy=energy_pointing_game(hm, gts),
                    )
                else:
                    loc = dict(iou=None, localized=None, pointing_hit=None, energy=None)
                rec = ImageRecord(
                    method=method,
                    image=str(path),
                    target_class=target,
                    prob=float(prob),
                    n_boxes=len(gts),
                    pred_box=None if pred is None else pred.as_tuple(),
                    **loc,
                )
                if faithfulness:
                    d = deletion(image, hm, predict_fn, target, n_steps=n_steps, baseline=baseline, batch_size=batch_size)
                    ins = insertion(
                        image, hm, predict_fn, target, n_steps=n_steps, blur_sigma=blur_sigma, batch_size=batch_size
                    )
                    y, o = confidence_change(image, hm, predict_fn, target, baseline=baseline)
                    rec.deletion_auc, rec.insertion_auc, rec.y_conf, rec.o_conf = d.auc, ins.auc, y, o
                    s = sums[method]
                    s["deletion"] += d.y
                    s["insertion"] += ins.y
                    s["n"] += 1
                records.append(rec)
                if lo + k < n_plot_examples:
                    examples[lo + k]["heatmaps"][method] = hm
                done += 1
                if progress is not None:
                    progress(done, total, method)

    x = np.arange(n_steps + 1) / n_steps
    curves = {}
    if faithfulness:
        for m in methods:
            n = max(1, sums[m]["n"])
            curves[m] = {"x": x, "deletion": sums[m]["deletion"] / n, "insertion": sums[m]["insertion"] / n}
    summary = summarize(records, methods)
    base = np.asarray(baseline, dtype=np.float64)
    meta = {
        "n_images": len(items),
        "methods": methods,
        "heatmap_threshold": threshold,
        "iou_threshold": iou_threshold,
        "pointing_tolerance_px": pointing_tolerance,
        "faithfulness": faithfulness,
        "n_steps": n_steps if faithfulness else None,
        "deletion_baseline": base.tolist() if faithfulness else None,
        "insertion_blur_sigma": ("auto: 5 * max(H, W) / 224" if blur_sigma is None else blur_sigma)
        if faithfulness
        else None,
        "space": "original image pixels (RGB uint8), each step image preprocessed by predict_fn",
        "box_convention": "0-based pixel edges, xmax/ymax exclusive",
        "auc": "trapezoidal area under target-class probability vs fraction of pixels, x in [0, 1]",
    }
    result = EvaluationResult(records=records, summary=summary, curves=curves, meta=meta)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        if plots:
            from .plots import plot_box_examples, plot_curves

            if curves:
                files["curves"] = plot_curves(curves, out_dir / "curves.png")
            if examples:
                files["boxes"] = plot_box_examples(examples, out_dir / "boxes.png", threshold, n_plot_examples)
        files["per_image"] = write_csv(out_dir / "per_image.csv", records)
        files["table"] = atomic_write(out_dir / "table.txt", result.table())
        files["summary"] = atomic_write(out_dir / "summary.json", result.to_json())
        result.files = files
    return result
