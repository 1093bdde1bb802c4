"""Image -> network input tensor, and the geometry to map heatmaps back onto the image.

Why a :class:`Geometry` travels with every tensor: a heatmap lives on the network's input
grid (or a coarser feature-map grid covering it), but it must be shown and evaluated on
the *original* photo.  With ``center_crop`` part of the photo never reached the network,
with ``letterbox`` part of the input is padding; only the preprocessing step knows how the
two grids line up, so it records that and does the inverse mapping.

Conventions (those of ``cv2.resize``): continuous coordinates with pixel ``i`` covering
``[i, i+1)``; an original image point ``u`` lands at ``u * scale + offset`` on the input.

Resizing the *image*: ``cv2.INTER_AREA`` when shrinking (averages every source pixel, so
no aliasing; the nearest OpenCV relative of the antialiased bilinear that torchvision/PIL
use), ``cv2.INTER_LINEAR`` when enlarging (``INTER_AREA`` would go blocky).  When one axis
shrinks and the other grows, each axis is resized on its own with its own rule.  Resizing
is done on uint8 pixels like the PIL-based torchvision pipeline, before scaling and
normalisation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np

from .contract import Preprocess
from .images import LoadedImage

__all__ = ["Geometry", "check_preprocess", "preprocess", "preprocess_batch", "resize_image"]

_LAYOUTS = ("NCHW", "NHWC")
_COLORS = ("RGB", "BGR", "GRAY")
_POLICIES = ("stretch", "center_crop", "letterbox")
_ALIGNMENTS = ("center", "topleft")
_BLOCK_ROWS = 512


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How the original image maps into the network input.

    ``original_size`` and ``input_size`` are (height, width).  The image was resized to
    ``resized_size`` (so ``scale = resized / original`` per axis) and placed with its
    top-left corner at ``offset`` (y, x) on the input: negative where ``center_crop``
    cut it, positive where padding went before it (``letterbox``, centred), 0 where the
    image sits in the top-left corner (``pad_align="topleft"``: padding right and below).
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    resized_size: tuple[int, int]
    offset: tuple[int, int]
    policy: str = "stretch"

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): input pixels per original pixel."""
        return (
            self.resized_size[0] / self.original_size[0],
            self.resized_size[1] / self.original_size[1],
        )

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the input region showing the image (the rest is padding)."""
        (H, W), (nh, nw), (oy, ox) = self.input_size, self.resized_size, self.offset
        return max(ox, 0), max(oy, 0), min(ox + nw, W), min(oy + nh, H)

    # ------------------------------------------------------------------ points and boxes

    def to_input_xy(self, x, y):
        """Original continuous coordinates -> input continuous coordinates."""
        sy, sx = self.scale
        return np.asarray(x, np.float64) * sx + self.offset[1], np.asarray(y, np.float64) * sy + self.offset[0]

    def to_original_xy(self, x, y):
        """Input continuous coordinates -> original continuous coordinates."""
        sy, sx = self.scale
        return (np.asarray(x, np.float64) - self.offset[1]) / sx, (np.asarray(y, np.float64) - self.offset[0]) / sy

    def box_to_original(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """An (x0, y0, x1, y1) box on the input -> the same box on the original, clipped to it."""
        x0, y0 = self.to_original_xy(box[0], box[1])
        x1, y1 = self.to_original_xy(box[2], box[3])
        h0, w0 = self.original_size
        return (
            float(np.clip(x0, 0, w0)),
            float(np.clip(y0, 0, h0)),
            float(np.clip(x1, 0, w0)),
            float(np.clip(y1, 0, h0)),
        )

    # ------------------------------------------------------------------ maps

    def to_original(self, map_hw: np.ndarray, interpolation: str = "linear") -> np.ndarray:
        """Resample a map covering the network input onto the original pixel grid.

        ``map_hw`` is (h, w) or (..., h, w) and covers the whole input uniformly: the
        input itself (h, w = input size) or a feature map (e.g. 7x7 for stride 32).
        Returns float32 of shape (..., H0, W0).

        * Each original pixel centre is projected onto the map and sampled bilinearly
          (half-pixel centres, edge values repeated: ``cv2.resize``'s ``INTER_LINEAR``
          convention) or, with ``interpolation="nearest"``, from the cell containing it.
        * Samples are clamped to the map cells whose centre lies on the image, so
          letterbox padding never bleeds into the result.
        * Original pixels that ``center_crop`` cut away get 0.
        """
        m = np.asarray(map_hw)
        if m.ndim < 2:
            raise ValueError(f"expected a map of shape (h, w) or (..., h, w), got {m.shape}")
        if interpolation not in ("linear", "nearest"):
            raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
        m = m.astype(np.float32, copy=False)
        h, w = m.shape[-2:]
        (H0, W0), (H, W) = self.original_size, self.input_size
        sy, sx = self.scale
        (oy, ox), (nh, nw) = self.offset, self.resized_size
        iy0, iy1, wy, vy = _axis_samples(H0, sy, oy, H, h, oy, oy + nh, interpolation)
        ix0, ix1, wx, vx = _axis_samples(W0, sx, ox, W, w, ox, ox + nw, interpolation)

        out = np.zeros(m.shape[:-2] + (H0, W0), np.float32)
        rows = np.flatnonzero(vy)
        cols = np.flatnonzero(vx)
        if rows.size == 0 or cols.size == 0:
            return out
        r_lo, r_hi = rows[0], rows[-1] + 1  # valid rows/cols are contiguous ranges
        c_lo, c_hi = cols[0], cols[-1] + 1
        cx0, cx1, cwx = ix0[c_lo:c_hi], ix1[c_lo:c_hi], wx[c_lo:c_hi]
        for r in range(r_lo, r_hi, _BLOCK_ROWS):
            sl = slice(r, min(r + _BLOCK_ROWS, r_hi))
            # a + (b - a) * t rather than a * (1 - t) + b * t: flat regions stay exactly flat.
            top = m[..., iy0[sl], :]
            rows_interp = top + (m[..., iy1[sl], :] - top) * wy[sl, None]  # (..., b, w)
            left = rows_interp[..., cx0]
            out[..., sl, c_lo:c_hi] = left + (rows_interp[..., cx1] - left) * cwx
        return out

    @classmethod
    def from_json(cls, d: dict) -> Geometry:
        """Inverse of :meth:`to_json` (e.g. to map a saved heatmap back later)."""
        return cls(
            tuple(int(v) for v in d["original_size"]),
            tuple(int(v) for v in d["input_size"]),
            tuple(int(v) for v in d["resized_size"]),
            tuple(int(v) for v in d["offset"]),
            str(d.get("policy", "stretch")),
        )

    def to_json(self) -> dict:
        """Plain-JSON form, to store next to a saved heatmap."""
        return {
            "original_size": list(self.original_size),
            "input_size": list(self.input_size),
            "resized_size": list(self.resized_size),
            "offset": list(self.offset),
            "policy": self.policy,
        }


def _axis_samples(n_out: int, scale: float, offset: int, extent: int, n_map: int, c0: int, c1: int, interpolation: str):
    """Per original pixel along one axis: two map indices, the weight of the second, validity."""
    u = (np.arange(n_out, dtype=np.float64) + 0.5) * scale + offset  # input coordinate of the centre
    valid = (u >= 0) & (u < extent)
    cell = n_map / extent  # map cells per input pixel
    # Cells whose centre lies on the image content [c0, c1) of the input.
    lo = max(0, math.ceil(max(c0, 0) * cell - 0.5))
    hi = min(n_map - 1, math.ceil(min(c1, extent) * cell - 0.5) - 1)
    if hi < lo:  # content narrower than one cell: fall back to the whole map
        lo, hi = 0, n_map - 1
    if interpolation == "nearest":
        idx = np.clip(np.floor(u * cell), lo, hi).astype(np.intp)
        return idx, idx, np.zeros(n_out, np.float32), valid
    pos = np.clip(u * cell - 0.5, lo, hi)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, hi)
    return i0, i1, (pos - i0).astype(np.float32), valid


# --------------------------------------------------------------------------- images


def resize_image(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an image with ``INTER_AREA`` for shrinking and ``INTER_LINEAR`` for enlarging, per axis."""
    h, w = img.shape[:2]
    nh, nw = int(size_hw[0]), int(size_hw[1])
    if (nh, nw) == (h, w):
        return img
    shrink_y, shrink_x = nh <= h, nw <= w
    if shrink_y and shrink_x:
        return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    if not shrink_y and not shrink_x:
        return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    # Mixed: one axis at a time, each with its own rule.
    img = cv2.resize(img, (nw, h), interpolation=cv2.INTER_AREA if shrink_x else cv2.INTER_LINEAR)
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if shrink_y else cv2.INTER_LINEAR)


def check_preprocess(pre: Preprocess) -> tuple[int, int]:
    """Raise ``ValueError`` naming the problem if ``pre`` is not a recipe :func:`preprocess`
    can follow; return the input (height, width)."""
    if pre.layout not in _LAYOUTS:
        raise ValueError(f"unknown layout {pre.layout!r}; expected one of {_LAYOUTS}")
    if pre.color not in _COLORS:
        raise ValueError(f"unknown color order {pre.color!r}; expected one of {_COLORS}")
    if pre.resize not in _POLICIES:
        raise ValueError(f"unknown resize policy {pre.resize!r}; expected one of {_POLICIES}")
    H, W = (int(s) for s in pre.size)
    if H <= 0 or W <= 0:
        raise ValueError(f"input size must be positive, got {pre.size}")
    channels = 1 if pre.color == "GRAY" else 3
    for name, vals in (("mean", pre.mean), ("std", pre.std)):
        if len(vals) not in (1, channels):
            raise ValueError(f"{name} has {len(vals)} values for a {channels}-channel input")
    if any(s == 0 for s in pre.std):
        raise ValueError("std must not contain 0")
    if pre.resize_shorter is not None and pre.resize_shorter <= 0:
        raise ValueError(f"resize_shorter must be positive, got {pre.resize_shorter}")
    if pre.pad_align not in _ALIGNMENTS:
        raise ValueError(f"unknown pad alignment {pre.pad_align!r}; expected one of {_ALIGNMENTS}")
    pad = pre.pad_values
    if len(pad) not in (1, channels):
        raise ValueError(f"pad_value has {len(pad)} values for a {channels}-channel input")
    if not all(math.isfinite(v) for v in pad):
        raise ValueError(f"pad_value must be finite, got {pre.pad_value}")
    return H, W


def _place(n: int, target: int, align: str) -> tuple[int, int]:
    """(pad before, crop before) for one axis: crop the centre the torchvision way; pad
    evenly (``center``) or only after the image (``topleft``)."""
    if n < target:
        return ((target - n) // 2 if align == "center" else 0), 0
    return 0, int(round((n - target) / 2.0))


def preprocess(image: LoadedImage | np.ndarray, pre: Preprocess) -> tuple[np.ndarray, Geometry]:
    """One image -> (float32 tensor CHW for NCHW models or HWC for NHWC, :class:`Geometry`).

    ``image`` is a :class:`LoadedImage` or an RGB uint8 H x W x 3 array.  Steps:

    * ``stretch``: resize to ``size``;
    * ``center_crop``: resize the shorter side to ``resize_shorter`` (the other side
      ``int(resize_shorter * long / short)``, as torchvision does; when ``None``, the
      smallest scale at which ``size`` fits), pad where smaller than ``size`` then take
      the centre ``size`` (offsets ``round((n - size) / 2)``, torchvision's ``CenterCrop``);
    * ``letterbox``: scale by ``min(H/h, W/w)`` (each side ``round``-ed), place, pad the rest;

    where the image is smaller than ``size`` it is placed per ``pad_align``: centred
    (``(size - n) // 2`` before it) or in the top-left corner (padding right and below).
    Then ``(pixel * scale - mean) / std`` per channel, ``mean``/``std`` given in the
    tensor's channel order (RGB, BGR, or one value for ``"GRAY"``).  Padding pixels are
    ``pad_value`` in pixel units (0..255, before ``scale``; ``114`` gives the YOLO grey),
    one value or one per channel in the same order as ``mean``.
    """
    rgb = image.rgb if isinstance(image, LoadedImage) else np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 H x W x 3 image, got {rgb.dtype} {rgb.shape}")
    H, W = check_preprocess(pre)
    h0, w0 = rgb.shape[:2]

    if pre.resize == "stretch":
        nh, nw = H, W
    elif pre.resize == "center_crop":
        if pre.resize_shorter is not None:
            s = int(pre.resize_shorter)
            nh, nw = (s, int(s * w0 / h0)) if h0 <= w0 else (int(s * h0 / w0), s)
        else:
            f = max(H / h0, W / w0)
            nh, nw = max(H, round(h0 * f)), max(W, round(w0 * f))
    else:  # letterbox
        f = min(H / h0, W / w0)
        nh, nw = min(H, max(1, round(h0 * f))), min(W, max(1, round(w0 * f)))
    nh, nw = max(1, nh), max(1, nw)
    resized = resize_image(rgb, (nh, nw))

    pad_y, crop_y = _place(nh, H, pre.pad_align)
    pad_x, crop_x = _place(nw, W, pre.pad_align)
    oy, ox = pad_y - crop_y, pad_x - crop_x

    # The visible part of the resized image, in the tensor's channel order ...
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + nh, H), min(ox + nw, W)
    visible = resized[y0 - oy : y1 - oy, x0 - ox : x1 - ox].astype(np.float32)
    if pre.color == "BGR":
        visible = visible[:, :, ::-1]
    elif pre.color == "GRAY":
        # ITU-R BT.601 luma, the weights of cv2.COLOR_RGB2GRAY, in float (no uint8 rounding).
        visible = (visible @ np.asarray([0.299, 0.587, 0.114], np.float32))[:, :, None]
    # ... pasted onto a canvas of pad_value (given in that same order).
    canvas = np.empty((H, W, visible.shape[2]), np.float32)
    canvas[...] = np.asarray(pre.pad_values, np.float32)
    canvas[y0:y1, x0:x1] = visible
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    tensor = (canvas * np.float32(pre.scale) - mean) / std
    if pre.layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    geometry = Geometry((h0, w0), (H, W), (nh, nw), (oy, ox), pre.resize)
    return np.ascontiguousarray(tensor, dtype=np.float32), geometry


def preprocess_batch(
    images: Sequence[LoadedImage | np.ndarray], pre: Preprocess
) -> tuple[np.ndarray, list[Geometry]]:
    """Several images -> (N x C x H x W or N x H x W x C float32 batch, one Geometry each)."""
    if len(images) == 0:
        raise ValueError("preprocess_batch needs at least one image")
    geometries: list[Geometry] = []
    batch: np.ndarray | None = None
    for i, image in enumerate(images):
        tensor, geometry = preprocess(image, pre)
        if batch is None:
            batch = np.empty((len(images),) + tensor.shape, np.float32)
        batch[i] = tensor
        geometries.append(geometry)
    assert batch is not None
    return batch, geometries
