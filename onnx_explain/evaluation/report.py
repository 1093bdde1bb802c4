"""Aggregating per-image metrics into per-method figures: text table, JSON, CSV.

Units: IoU, localization accuracy, pointing-game accuracy, energy pointing game and
the deletion/insertion AUCs are fractions in [0, 1]; average drop and increase in
confidence are percentages, as Grad-CAM++ defines them. Images without ground-truth
boxes are left out of the localization figures; metrics that were not computed (NaN)
are left out of their mean, and a mean over nothing is NaN (``null`` in JSON).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .faithfulness import average_drop, increase_in_confidence

__all__ = [
    "ImageRecord",
    "METRICS",
    "summarize",
    "format_table",
    "summary_to_json",
    "write_json",
    "write_csv",
    "atomic_write",
]


@dataclasses.dataclass
class ImageRecord:
    """Every number measured for one image and one method.

    ``pred_box`` is ``(xmin, ymin, xmax, ymax)`` in 0-based exclusive pixels, or
    ``None`` when the heatmap highlights nothing. Localization fields are ``None`` for
    an image without ground truth; faithfulness fields are NaN when not computed.
    ``y_conf``/``o_conf`` are the target probability on the image and on the
    explanation map (Grad-CAM++'s ``Y_c`` and ``O_c``).
    """

    method: str
    image: str
    target_class: int
    prob: float
    n_boxes: int
    pred_box: tuple[float, float, float, float] | None
    iou: float | None
    localized: bool | None
    pointing_hit: bool | None
    energy: float | None
    deletion_auc: float = float("nan")
    insertion_auc: float = float("nan")
    y_conf: float = float("nan")
    o_conf: float = float("nan")


# (key, label in the table, better direction, format)
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("n_images", "images", "", "{:d}"),
    ("mean_iou", "mean IoU", "higher", "{:.3f}"),
    ("localization_accuracy", "loc. accuracy (IoU>={iou_threshold:g})", "higher", "{:.3f}"),
    ("pointing_game", "pointing game accuracy", "higher", "{:.3f}"),
    ("energy_pointing_game", "energy pointing game", "higher", "{:.3f}"),
    ("deletion_auc", "deletion AUC", "lower", "{:.4f}"),
    ("insertion_auc", "insertion AUC", "higher", "{:.4f}"),
    ("average_drop", "average drop %", "lower", "{:.2f}"),
    ("increase_in_confidence", "increase in confidence %", "higher", "{:.2f}"),
)


def _mean(values: Iterable) -> float:
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def summarize(records: Sequence[ImageRecord], methods: Sequence[str] | None = None) -> dict[str, dict]:
    """Per-method aggregates, in the order of ``methods`` (default: first appearance)."""
    if methods is None:
        methods = list(dict.fromkeys(r.method for r in records))
    out: dict[str, dict] = {}
    for m in methods:
        rs = [r for r in records if r.method == m]
        loc = [r for r in rs if r.iou is not None]
        y = np.array([r.y_conf for r in rs], dtype=np.float64)
        o = np.array([r.o_conf for r in rs], dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(o)
        out[m] = {
            "n_images": len(rs),
            "n_localization": len(loc),
            "mean_iou": _mean(r.iou for r in loc),
            "localization_accuracy": _mean(float(bool(r.localized)) for r in loc),
            "pointing_game": _mean(float(bool(r.pointing_hit)) for r in loc),
            "energy_pointing_game": _mean(r.energy for r in loc),
            "deletion_auc": _mean(r.deletion_auc for r in rs),
            "insertion_auc": _mean(r.insertion_auc for r in rs),
            "average_drop": average_drop(y[ok], o[ok]) if ok.any() else float("nan"),
            "increase_in_confidence": increase_in_confidence(y[ok], o[ok]) if ok.any() else float("nan"),
        }
    return out


def format_table(summary: dict[str, dict], iou_threshold: float = 0.5) -> str:
    """A plain-text table: one row per metric, one column per method."""
    methods = list(summary)
    rows = [["metric", "better"] + methods]
    for key, label, better, fmt in METRICS:
        cells = [label.format(iou_threshold=iou_threshold), better]
        for m in methods:
            v = summary[m].get(key)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append("-")
            else:
                cells.append(fmt.format(int(v) if fmt == "{:d}" else float(v)))
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        parts = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, Path):
        return str(v)
    return v


def summary_to_json(summary: dict[str, dict], meta: dict | None = None) -> str:
    """``{"meta": {...}, "methods": {method: {metric: value}}}`` (NaN -> null)."""
    from onnx_explain.outputs import dumps_strict

    return dumps_strict(_jsonable({"meta": meta or {}, "methods": summary}), indent=2) + "\n"


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write a file whole or not at all (creating its folder), as every output is written."""
    from onnx_explain.outputs import write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str | Path, summary: dict[str, dict], meta: dict | None = None) -> Path:
    return atomic_write(path, summary_to_json(summary, meta))


_CSV_FIELDS = [f.name for f in dataclasses.fields(ImageRecord)]


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, tuple):
        return " ".join(_csv_cell(x) for x in v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return ""
        return f"{v:.6g}"
    return str(v)


def write_csv(path: str | Path, records: Sequence[ImageRecord]) -> Path:
    """One row per (method, image); ``pred_box`` as ``"xmin ymin xmax ymax"``; booleans
    as 0/1; missing values empty."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_FIELDS)
    for r in records:
        w.writerow([_csv_cell(getattr(r, f)) for f in _CSV_FIELDS])
    return atomic_write(path, buf.getvalue())
