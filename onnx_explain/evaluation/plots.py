"""PNG figures for an evaluation: mean deletion/insertion curves, boxes on images.

matplotlib is an optional dependency (``onnx-explain[evaluate]``); it is imported
inside the functions, through its object-oriented API and the Agg canvas, so no
global backend is switched and nothing opens a window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .boxes import Box
from .localization import best_iou, box_from_heatmap

__all__ = ["plot_curves", "plot_box_examples"]


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'onnx-explain[evaluate]'") from e
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    from .report import atomic_write
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


def plot_curves(curves: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """Mean deletion (left) and insertion (right) curves, one line per method.

    ``curves[method]`` holds ``"x"`` (fractions of pixels, 0..1) and ``"deletion"``
    and/or ``"insertion"`` (mean target probability at each x); the legend gives the
    AUC of each mean curve.
    """
    from .faithfulness import auc

    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2)
    for ax, kind, note in zip(axes, ("deletion", "insertion"), ("lower AUC is better", "higher AUC is better")):
        for method, c in curves.items():
            y = c.get(kind)
            if y is None or len(y) < 2 or not np.all(np.isfinite(y)):
                continue
            x = np.asarray(c.get("x", np.linspace(0, 1, len(y))))
            ax.plot(x, y, label=f"{method} (AUC {auc(y, x):.3f})")
        ax.set_title(f"{kind} ({note})")
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("target-class probability")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def _draw_box(ax, b: Box, color: str, style: str = "-"):
    from matplotlib.patches import Rectangle

    # Pixel-edge coordinates; imshow puts pixel centres on integers, edges at -0.5.
    ax.add_patch(
        Rectangle(
            (b.xmin - 0.5, b.ymin - 0.5), b.width, b.height, fill=False, edgecolor=color, linewidth=2, linestyle=style
        )
    )


def plot_box_examples(
    examples: Sequence[Mapping],
    path: str | Path,
    threshold: float = 0.15,
    max_images: int = 4,
) -> Path:
    """A grid of images (rows) by methods (columns): heatmap over the image, the
    annotated boxes (green, solid) and the box found from the heatmap (red, dashed,
    :func:`box_from_heatmap` at ``threshold``), with the IoU in the title.

    ``examples``: dicts with ``"image"`` (H x W x 3 RGB uint8), ``"gt_boxes"`` (list of
    :class:`Box`), ``"heatmaps"`` (``{method: H x W map in [0, 1]}``) and optionally
    ``"title"``.
    """
    examples = list(examples)[:max_images]
    if not examples:
        raise ValueError("no examples to plot")
    methods = list(dict.fromkeys(m for e in examples for m in e["heatmaps"]))
    ncols = max(1, len(methods))
    fig = _figure(3.2 * ncols, 3.0 * len(examples))
    axes = np.atleast_2d(np.asarray(fig.subplots(len(examples), ncols, squeeze=False)))
    for i, ex in enumerate(examples):
        img = np.asarray(ex["image"])
        gts = list(ex.get("gt_boxes", []))
        for j, m in enumerate(methods):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            hm = ex["heatmaps"].get(m)
            title = m
            if hm is not None:
                hm = np.asarray(hm, dtype=np.float64)
                ax.imshow(hm, cmap="jet", alpha=0.45, vmin=0.0, vmax=max(1e-12, float(hm.max())))
                pred = box_from_heatmap(hm, threshold)
                if pred is not None:
                    _draw_box(ax, pred, "red", "--")
                title = f"{m}  IoU {best_iou(pred, gts):.2f}" if gts else m
            for g in gts:
                _draw_box(ax, g, "lime")
            if j == 0 and ex.get("title"):
                title = f"{ex['title']}\n{title}"
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    return _save(fig, path)
