"""``onnx-explain evaluate``: an explain model, a folder of images and their boxes in;
the localization and faithfulness figures of each method out.

This is the glue between :class:`~onnx_explain.explainer.Explainer` and
:func:`~onnx_explain.evaluation.evaluate.evaluate`:

* ``explain_fn`` is :meth:`Explainer.explain` (batched; heatmaps at the original
  resolution, in [0, 1]);
* ``predict_fn`` preprocesses each deletion/insertion step image with the model's own
  preprocessing (from its metadata) and runs the ``probabilities`` output only (the
  session prunes the gradient subgraph away for that);
* the deletion baseline and the "zero" of Grad-CAM++'s explanation map is the pixel
  value the preprocessing maps to 0 (:func:`baseline_from_preprocess`; the ImageNet
  mean for the usual models);
* images are read once up front with the same loader as ``explain``: a file that does
  not load is reported by name and left out (exit status 1), the others are evaluated.

Targets (``--target``): ``top1`` (each image's predicted class), a class index (the
same for every image), or ``annotated``: the class named by the image's boxes. Box
labels are then class indices, or model labels (compared case-insensitively, ``_``
and ``-`` read as spaces, any of the comma-separated synonyms of an ImageNet label
counts). When an image's boxes name several classes, the class with the largest total
box area is explained and only its boxes count for localization.
"""

from __future__ import annotations

import collections
import contextlib
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from onnx_explain.errors import ExplainError, ModelError
from onnx_explain.outputs import clean_stale_temporaries, for_terminal, lock_folder

from .boxes import AnnotationError, Box, ImageAnnotation, load_annotations, match_annotations
from .evaluate import EvaluationResult, evaluate
from .faithfulness import baseline_from_preprocess
from .report import atomic_write

__all__ = ["run_evaluation", "parse_target", "label_index", "EXIT_OK", "EXIT_SOME_FAILED"]

EXIT_OK, EXIT_SOME_FAILED = 0, 1


class EvaluationError(ExplainError):
    """The evaluation cannot run as asked (no images, no annotations, labels that do not match)."""


def parse_target(value: str | int | None) -> int | str | None:
    """``"top1"`` (or ``None``, ``-1``) -> ``None``; ``"annotated"`` -> ``"annotated"``;
    a class index -> ``int``. Anything else is a ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return None if int(value) < 0 else int(value)
    text = str(value).strip().lower()
    if text in ("top1", "top-1", "-1"):
        return None
    if text in ("annotated", "annotation", "boxes"):
        return "annotated"
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"--target must be 'top1', a class index or 'annotated', got {value!r}") from None
    if v < 0:
        raise ValueError(f"--target class index must be >= 0, got {v}")
    return v


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", text).lower().split())


def label_index(labels: Sequence[str] | None) -> dict[str, set[int]]:
    """Normalised label (and each comma-separated synonym) -> class indices."""
    index: dict[str, set[int]] = {}
    for i, lab in enumerate(labels or []):
        names = {_norm(lab)} | {_norm(part) for part in str(lab).split(",")}
        for n in names:
            if n:
                index.setdefault(n, set()).add(i)
    return index


def _resolve_label(label: str | None, index: dict[str, set[int]], n_classes: int | None, where: str,
                   has_labels: bool) -> int:
    if label is None or not label.strip():
        raise EvaluationError(f"{where}: a box has no label, so --target annotated cannot tell its class")
    text = label.strip()
    if re.fullmatch(r"\d+", text):
        c = int(text)
        if n_classes is not None and c >= n_classes:
            raise EvaluationError(
                f"{where}: box label {text!r} is class {c}, out of range for the model's {n_classes} classes"
            )
        return c
    found = index.get(_norm(text), set())
    if len(found) == 1:
        return next(iter(found))
    if len(found) > 1:
        raise EvaluationError(
            f"{where}: box label {text!r} matches several model classes ({', '.join(map(str, sorted(found)))}); "
            "use class indices as box labels"
        )
    if not has_labels:
        raise EvaluationError(
            f"{where}: box label {text!r} is not a class index and the model stores no class labels; "
            "--target annotated needs box labels that are class indices (or use --target top1)"
        )
    raise EvaluationError(
        f"{where}: box label {text!r} is neither a class index nor one of the model's labels; "
        "--target annotated needs box labels naming the model's classes (or use --target top1)"
    )


class _ImageCache:
    """The last few decoded images, so each one is read once per batch, not once per method."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.items: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def get(self, path: Path):
        from onnx_explain.images import load_image

        key = str(path)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        img = load_image(path)
        self.items[key] = img
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return img


def _predict_fn(explainer):
    from onnx_explain.preprocess import preprocess_batch

    pre = explainer.preprocess

    def predict(images: np.ndarray) -> np.ndarray:
        batch, _ = preprocess_batch(list(images), pre)
        if pre.layout == "NHWC":  # the session speaks channel-first
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return explainer.session(batch, None, ["probabilities"])["probabilities"]

    return predict


def _baseline(preprocess) -> np.ndarray | float:
    b = np.asarray(baseline_from_preprocess(preprocess), dtype=np.float64).reshape(-1)
    if b.size == 1:
        return float(b[0])
    if b.size != 3:
        return 0.0
    return np.clip(b, 0.0, 255.0)


def run_evaluation(
    model: str | Path,
    images_dir: str | Path,
    boxes: str | Path,
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    threshold: float = 0.15,
    steps: int = 32,
    target: str | int | None = "top1",
    batch_size: int = 16,
    device: str = "auto",
    threads: int | None = None,
    as_json: bool = False,
    iou_threshold: float = 0.5,
    pointing_tolerance: float = 0.0,
    faithfulness: bool = True,
    plots: bool = True,
    progress: bool = True,
) -> int:
    """Evaluate ``methods`` of the explain model ``model`` on the images of ``images_dir``
    with the ground-truth boxes of ``boxes`` (a directory of Pascal VOC XML, one .xml, or
    a CSV); print the table (or, with ``as_json``, the summary JSON) and write
    ``summary.json``, ``per_image.csv``, ``table.txt``, ``curves.png`` and ``boxes.png``
    to ``out_dir``.

    Returns the exit status: 0, or 1 when some images could not be read (they are
    reported on stderr by name and left out). Problems that stop the whole run raise
    :class:`~onnx_explain.errors.ExplainError` or ``ValueError`` with a one-line message
    naming the file.
    """
    from onnx_explain.explainer import Explainer
    from onnx_explain.images import ImageError, iter_image_paths

    t_start = time.perf_counter()
    methods = list(dict.fromkeys(m.strip() for m in methods if m and m.strip()))
    if not methods:
        raise ValueError("no explanation method given (e.g. -m cam,gradcam)")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    mode = parse_target(target)
    images_dir, boxes, out_dir = Path(images_dir), Path(boxes), Path(out_dir)
    if not images_dir.is_dir():
        raise EvaluationError(f"{images_dir}: not a directory of images")

    errors: list[dict[str, str]] = []

    def report(path, msg: str) -> None:
        errors.append({"file": str(path), "error": msg})
        click.echo(f"error: {for_terminal(msg)}", err=True)

    def warn(msg: str) -> None:
        click.echo(f"warning: {for_terminal(msg)}", err=True)

    annotations = load_annotations(boxes)  # AnnotationError names the file (and line)

    with Explainer(model, device=device, threads=threads) as ex:
        for m in methods:  # unknown method, or one this model cannot do: fail before any work
            ex.method(m)
        n_classes = ex.session.num_classes
        if isinstance(mode, int) and n_classes is not None and mode >= n_classes:
            raise ModelError(f"--target {mode} is out of range: {model} has {n_classes} classes (0..{n_classes - 1})")

        paths, problems = iter_image_paths([images_dir])
        for p in problems:
            report(p.path, str(p))
        cache = _ImageCache(2 * batch_size + 2)
        good: list[Path] = []
        sizes: dict[Path, tuple[int, int]] = {}
        for p in paths:
            try:
                img = cache.get(p)
            except ImageError as exc:
                report(p, str(exc))
                continue
            good.append(p)
            sizes[p] = img.original_size
        if not good:
            raise EvaluationError(f"{images_dir}: no image could be read ({len(errors)} failed)")

        # Pair images with boxes; an image without an annotation counts only in faithfulness.
        matched = match_annotations(good, annotations, missing="skip")
        by_path: dict[Path, list[Box]] = {p: b for p, b in matched}
        if not by_path:
            raise AnnotationError(
                f"{boxes}: none of the {len(good)} images in {images_dir} has an annotation here "
                "(matched by file name, then by stem)"
            )
        unannotated = [p for p in good if p not in by_path]
        if unannotated:
            names = ", ".join(p.name for p in unannotated[:5]) + (", ..." if len(unannotated) > 5 else "")
            warn(f"{len(unannotated)} image(s) have no annotation in {boxes} and count only in the "
                 f"faithfulness metrics: {names}")
        owners = _owners(by_path, annotations)
        _check_sizes(owners, sizes, warn)

        targets: dict[Path, int] = {}
        items: list[tuple[Path, list[Box]]] = []
        if mode == "annotated":
            index = label_index(ex.session.labels)
            for p in good:
                bxs = by_path.get(p, [])
                if not bxs:
                    report(p, f"{p}: no annotated box, so no class to explain with --target annotated; left out")
                    continue
                where = f"{owners[p].source if p in owners else boxes} (image {p.name})"
                classes = [_resolve_label(b.label, index, n_classes, where, bool(ex.session.labels)) for b in bxs]
                area: dict[int, float] = {}
                for c, b in zip(classes, bxs):
                    area[c] = area.get(c, 0.0) + b.area
                chosen = max(area, key=lambda c: (area[c], -classes.index(c)))
                targets[p] = chosen
                items.append((p, [b for c, b in zip(classes, bxs) if c == chosen]))
            if not items:
                raise EvaluationError(f"{images_dir}: no image with an annotated box to evaluate")
        else:
            items = [(p, by_path.get(p, [])) for p in good]

        def explain_fn(batch_paths: list, method: str):
            images = [cache.get(p) for p in batch_paths]
            t: Any = mode if isinstance(mode, int) else None
            if mode == "annotated":
                t = [targets[Path(p)] for p in batch_paths]
            res = ex.explain(images, method=method, target=t, batch_size=batch_size, top_k=1)
            return [(e.heatmap, e.target_class, e.probability) for e in res]

        baseline = _baseline(ex.preprocess)
        from tqdm import tqdm

        bar = tqdm(total=len(items) * len(methods), desc="evaluating", unit="img", file=sys.stderr,
                   disable=not progress, leave=False, dynamic_ncols=True)

        def on_progress(done: int, total: int, method: str) -> None:
            bar.set_postfix_str(method, refresh=False)
            bar.update(done - bar.n)

        created = not out_dir.exists()
        held = contextlib.ExitStack()
        try:
            held.enter_context(lock_folder(out_dir))  # a second run into the same --out is refused
            clean_stale_temporaries(out_dir)
            result: EvaluationResult = evaluate(
                explain_fn,
                _predict_fn(ex),
                items,
                methods,
                out_dir=out_dir,
                threshold=threshold,
                iou_threshold=iou_threshold,
                pointing_tolerance=pointing_tolerance,
                faithfulness=faithfulness,
                n_steps=steps,
                baseline=baseline,
                batch_size=batch_size,
                explain_batch_size=batch_size,
                load_image=lambda p: cache.get(p).rgb,
                progress=on_progress,
                plots=plots,
            )
        except BaseException:
            held.close()
            if created:  # a run that failed leaves no empty folder behind
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
            raise
        finally:
            bar.close()
        providers = ex.session.active_providers
        target_layer = ex.session.metadata.target_layer

    seconds = time.perf_counter() - t_start
    result.meta.update({
        "model": str(model),
        "target_layer": target_layer,
        "providers": providers,
        "images_dir": str(images_dir),
        "boxes": str(boxes),
        "target": "top1" if mode is None else mode,
        "n_annotated": sum(1 for _, b in items if b),
        "failed": errors,
        "seconds": round(seconds, 2),
    })
    with held:
        if "summary" in result.files:  # again, now with the run's details
            atomic_write(result.files["summary"], result.to_json())

    if as_json:
        click.echo(result.to_json(), nl=False)
    else:
        tgt = "top-1 class" if mode is None else ("annotated class" if mode == "annotated" else f"class {mode}")
        click.echo(f"{model}: {len(items)} images ({result.meta['n_annotated']} with boxes), target {tgt}, "
                   f"{steps} deletion/insertion steps")
        click.echo(result.table(), nl=False)
        names = ", ".join(f.name for f in result.files.values())
        click.echo(f"wrote {names} to {out_dir} in {seconds:.1f} s"
                   + (f"; {len(errors)} input(s) failed" if errors else ""))
    return EXIT_SOME_FAILED if errors else EXIT_OK


def _owners(by_path: dict[Path, list[Box]], annotations: Sequence[ImageAnnotation]) -> dict[Path, ImageAnnotation]:
    """The annotation each image's boxes came from (matched boxes are the annotation's own
    objects, so identity tells); images with no box are left out."""
    owner = {id(b): a for a in annotations for b in a.boxes}
    return {p: owner[id(b[0])] for p, b in by_path.items() if b and id(b[0]) in owner}


def _check_sizes(owners: dict[Path, ImageAnnotation], sizes: dict[Path, tuple[int, int]], warn) -> None:
    """Warn when a VOC file states an image size other than the image's own."""
    for p, ann in owners.items():
        if ann.width is None or ann.height is None:
            continue
        h, w = sizes[p]
        if (ann.width, ann.height) != (w, h):
            warn(f"{ann.source}: states an image size of {ann.width}x{ann.height}, but {p} is {w}x{h}; "
                 "its boxes may be in another coordinate frame")
