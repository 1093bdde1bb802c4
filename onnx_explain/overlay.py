"""Drawing heatmaps and boxes over images, all RGB uint8 in and out.

Why OpenCV colormaps: ``cv2.applyColorMap`` is a 256-entry table lookup (fast, no
matplotlib at run time) and ships the maps people expect (jet, turbo, viridis...).  It
returns BGR; everything here converts so that callers only ever see RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["COLORMAPS", "caption", "colorize", "draw_box", "is_flat", "overlay"]

# Every colormap this OpenCV build has, by lower-case name: "jet", "turbo", "inferno",
# "viridis", "magma", "hot", "plasma", "parula", ...
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}


_BLOCK_PIXELS = 1 << 20


def _ascii(text: str) -> str:
    """``text`` in printable ASCII, the only characters OpenCV's Hershey fonts draw: any
    other character is written as its Python escape (``é`` -> ``\\xe9``, a newline ->
    ``\\n``), so a label can neither turn into question marks nor break the line."""
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in str(text))


def caption(label: str, probability: float | None = None, max_chars: int = 48) -> str:
    """The text written above an explanation's box: ``"tabby cat  p=0.92"``.

    Two spaces and ``p=`` keep the probability apart from the label (a label "180" and
    0.92 would otherwise read "180 0.92"); a label that is only a class index reads
    ``"class 180"``.  The label is escaped to printable ASCII (see :func:`_ascii`) and cut
    to ``max_chars`` characters with ``"..."``.
    """
    text = _ascii(label).strip()
    if text.isdigit():
        text = f"class {text}"
    if len(text) > max_chars:
        text = text[: max(1, max_chars - 3)].rstrip() + "..."
    if probability is None:
        return text
    return f"{text}  p={float(probability):.2f}"


def is_flat(map_: np.ndarray) -> bool:
    """True when a map has one value everywhere (non-finite values counting as 0), as an
    all-zero gradient gives: normalised, it is all zero and its overlay shows nothing."""
    m = np.nan_to_num(np.asarray(map_, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return m.size == 0 or bool(m.max() <= m.min())


def _colormap_id(colormap: str) -> int:
    key = str(colormap).lower()
    if key not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}")
    return COLORMAPS[key]


def colorize(heatmap01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A 2-D map in [0, 1] -> H x W x 3 RGB uint8 colours (values clipped, NaN -> 0)."""
    h = np.asarray(heatmap01, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H x W), got shape {h.shape}")
    h = np.nan_to_num(h, nan=0.0, posinf=1.0, neginf=0.0)
    levels = np.rint(np.clip(h, 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, _colormap_id(colormap))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(
    image_rgb_uint8: np.ndarray,
    heatmap01: np.ndarray,
    colormap: str = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a colourised heatmap over an image: ``round((1 - alpha) * image + alpha * colour)``.

    The heatmap must already be on the image's pixel grid (use
    :meth:`onnx_explain.preprocess.Geometry.to_original`): stretching a centre-cropped or
    letterboxed map here would put it in the wrong place, so a size mismatch is an error.
    A gray (H x W) image is accepted and shown in colour.
    """
    img = np.asarray(image_rgb_uint8)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 RGB, got shape {img.shape}")
    heat = np.asarray(heatmap01)
    if heat.shape != img.shape[:2]:
        raise ValueError(
            f"heatmap shape {heat.shape} does not match image size {img.shape[:2]}; "
            "map it onto the image first (Geometry.to_original)"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    # Row blocks of about a million pixels: the float temporaries stay a few MB whatever
    # the photo's size (a 100 MP photo blended at once took 3.7 GB).
    out = np.empty(img.shape, np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, img.shape[1]))
    keep, mix = np.float32(1.0 - alpha), np.float32(alpha)
    for r0 in range(0, img.shape[0], rows):
        block = slice(r0, r0 + rows)
        color = colorize(heat[block], colormap)
        blended = img[block].astype(np.float32) * keep + color.astype(np.float32) * mix
        out[block] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def draw_box(
    image: np.ndarray,
    box: Sequence[float],
    color: tuple[int, int, int] = (255, 0, 0),
    label: str | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Return a copy of ``image`` (RGB uint8) with box ``(x0, y0, x1, y1)`` drawn in ``color`` (RGB).

    Coordinates are continuous pixel coordinates (a box ``(0, 0, W, H)`` frames the whole
    image); the rectangle is drawn on the pixels just inside them.  ``thickness`` defaults
    to ~0.3 % of the image diagonal (at least 1).  ``label`` is written on a filled band
    above the box (inside it when the box touches the top edge), in printable ASCII (other
    characters as escapes; see :func:`caption`).  The input is not changed.
    """
    img = np.ascontiguousarray(np.array(image, dtype=np.uint8, copy=True))
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 RGB uint8, got shape {img.shape}")
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    H, W = img.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise ValueError(f"box has non-finite coordinates: {box!r}")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    # Pixels covered: [round(x0), round(x1) - 1], clipped to the image.
    px0 = int(np.clip(round(x0), 0, W - 1))
    py0 = int(np.clip(round(y0), 0, H - 1))
    px1 = int(np.clip(round(x1) - 1, 0, W - 1))
    py1 = int(np.clip(round(y1) - 1, 0, H - 1))
    px1, py1 = max(px1, px0), max(py1, py0)
    t = int(thickness) if thickness is not None else max(1, int(round(0.003 * float(np.hypot(H, W)))))
    col = tuple(int(c) for c in color)
    # Filled bands rather than cv2.rectangle(thickness=t), which centres thick lines on the edge.
    for k in range(t):
        if px0 + k > px1 - k or py0 + k > py1 - k:
            break
        cv2.rectangle(img, (px0 + k, py0 + k), (px1 - k, py1 - k), col, 1, lineType=cv2.LINE_8)

    if label:
        font = cv2.FONT_HERSHEY_SIMPLEX
        font_scale = max(0.35, min(H, W) / 700.0)
        text_t = max(1, t // 2)
        label = _ascii(label)
        (tw, th), baseline = cv2.getTextSize(label, font, font_scale, text_t)
        band_h = th + baseline + 2
        top = py0 - band_h if py0 - band_h >= 0 else py0
        left = min(px0, max(0, W - tw - 2))
        cv2.rectangle(img, (left, top), (min(W - 1, left + tw + 2), min(H - 1, top + band_h)), col, -1)
        # Text in black or white, whichever stands out on the band colour.
        luma = 0.299 * col[0] + 0.587 * col[1] + 0.114 * col[2]
        text_col = (0, 0, 0) if luma > 140 else (255, 255, 255)
        cv2.putText(img, label, (left + 1, top + th + 1), font, font_scale, text_col, text_t, cv2.LINE_AA)
    return img
