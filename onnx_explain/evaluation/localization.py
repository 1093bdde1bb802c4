"""Localization metrics: how well a heatmap points at the annotated object.

All maps are 2-D arrays at the **original image resolution** (``H x W``), the boxes
are :class:`~onnx_explain.evaluation.boxes.Box` in the same pixels (0-based, exclusive
maximum). A pixel ``(row, col)`` is inside a box when its centre
``(col + 0.5, row + 0.5)`` is.

* :func:`box_from_heatmap` — weakly supervised localization as in CAM (Zhou et al.,
  2016) and Grad-CAM (Selvaraju et al., 2017): keep the pixels at or above a fraction
  of the map's maximum (0.15 by default, the Grad-CAM value; CAM used 0.20), take the
  largest connected component, return its bounding box.
* :func:`iou`, :func:`best_iou` — intersection over union; an image counts as
  localized when ``best_iou >= 0.5`` (the ILSVRC/VOC criterion).
* :func:`pointing_game_hit` — pointing game (Zhang et al., 2016): the map's maximum
  falls inside one of the boxes (optionally within a tolerance, 15 px in the paper).
* :func:`energy_pointing_game` — energy-based pointing game (Score-CAM, Wang et al.,
  2020): share of the map's mass inside the union of the boxes.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .boxes import Box

__all__ = [
    "box_from_heatmap",
    "iou",
    "best_iou",
    "boxes_mask",
    "pointing_game_hit",
    "energy_pointing_game",
]

BoxLike = Box | Sequence[float]


def _as_box(b: BoxLike) -> Box:
    if isinstance(b, Box):
        return b
    x0, y0, x1, y1 = (float(v) for v in b[:4])
    return Box(x0, y0, x1, y1)


def _as_map(heatmap, keep_float32: bool = False) -> np.ndarray:
    h = np.asarray(heatmap)
    if not (keep_float32 and h.dtype == np.float32):
        h = h.astype(np.float64, copy=False)
    if h.ndim == 3 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D (H x W) array, got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("heatmap contains NaN or infinite values")
    return h


def box_from_heatmap(heatmap, threshold: float = 0.15, connectivity: int = 8) -> Box | None:
    """Bounding box of the largest connected region of ``heatmap >= threshold * max``.

    ``heatmap``: 2-D map at original image resolution (any non-negative scale; it is
    compared to a fraction of its own maximum). Returns ``None`` when the map's maximum
    is not positive (nothing is highlighted). Ties between equally large components go
    to the one OpenCV labels first (top-most, then left-most). The box is in 0-based
    pixel-edge coordinates with exclusive maximum: a component covering columns
    ``3..7`` gives ``xmin=3, xmax=8``.
    """
    h = _as_map(heatmap, keep_float32=True)  # no float64 copy of a photo-sized map
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a fraction in [0, 1], got {threshold}")
    peak = float(h.max()) if h.size else 0.0
    if peak <= 0.0:
        return None
    cut = threshold * peak
    mask = np.empty(h.shape, np.uint8)
    rows = max(1, (1 << 20) // max(1, h.shape[1]))
    for r0 in range(0, h.shape[0], rows):  # compared in float64, a block of rows at a time
        mask[r0 : r0 + rows] = h[r0 : r0 + rows].astype(np.float64) >= cut
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity)
    if n <= 1:  # pragma: no cover - the peak itself is always in the mask
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    i = 1 + int(np.argmax(areas))
    x, y, w, hh = (int(stats[i, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    return Box(float(x), float(y), float(x + w), float(y + hh))


def iou(a: BoxLike, b: BoxLike) -> float:
    """Intersection over union of two boxes (continuous areas, pixel-edge coordinates)."""
    a, b = _as_box(a), _as_box(b)
    iw = min(a.xmax, b.xmax) - max(a.xmin, b.xmin)
    ih = min(a.ymax, b.ymax) - max(a.ymin, b.ymin)
    inter = max(0.0, iw) * max(0.0, ih)
    union = a.area + b.area - inter
    return float(inter / union) if union > 0 else 0.0


def best_iou(pred: BoxLike | None, gt_boxes: Sequence[BoxLike]) -> float:
    """Largest IoU between ``pred`` and any ground-truth box; 0 when ``pred`` is ``None``
    or there is no ground truth."""
    if pred is None or not gt_boxes:
        return 0.0
    return max(iou(pred, g) for g in gt_boxes)


def boxes_mask(shape: tuple[int, int], gt_boxes: Sequence[BoxLike]) -> np.ndarray:
    """Boolean ``H x W`` mask of the union of the boxes (pixel centres inside a box)."""
    hgt, wid = int(shape[0]), int(shape[1])
    mask = np.zeros((hgt, wid), dtype=bool)
    for b in gt_boxes:
        rows, cols = _as_box(b).pixel_ranges(hgt, wid)
        mask[rows, cols] = True
    return mask


def pointing_game_hit(heatmap, gt_boxes: Sequence[BoxLike], tolerance: float = 0.0) -> bool:
    """Whether the map's maximum lies inside one of the boxes.

    The maximum is the first arg-max in row-major order (``np.argmax``). With
    ``tolerance > 0`` a hit also counts when the maximum's pixel centre is within that
    many pixels (Euclidean) of a box, as in Zhang et al. (15 px). A map with no positive
    value never hits.
    """
    h = _as_map(heatmap)
    if not gt_boxes or h.size == 0 or float(h.max()) <= 0.0:
        return False
    r, c = np.unravel_index(int(np.argmax(h)), h.shape)
    px, py = c + 0.5, r + 0.5
    for b in gt_boxes:
        b = _as_box(b)
        dx = max(b.xmin - px, 0.0, px - b.xmax)
        dy = max(b.ymin - py, 0.0, py - b.ymax)
        if dx * dx + dy * dy <= tolerance * tolerance:
            return True
    return False


def energy_pointing_game(heatmap, gt_boxes: Sequence[BoxLike]) -> float:
    """Share (0..1) of the map's mass inside the union of the boxes.

    Negative values are clipped to 0 first; a map with no positive mass scores 0.
    """
    h = np.clip(_as_map(heatmap), 0.0, None)
    total = float(h.sum())
    if total <= 0.0 or not gt_boxes:
        return 0.0
    return float(h[boxes_mask(h.shape, gt_boxes)].sum() / total)
