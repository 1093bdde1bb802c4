"""Resizing of maps in plain numpy, with the exact sampling rules of ``torch.nn.functional.interpolate``.

Score-CAM and Guided Grad-CAM resize feature maps to the input size *inside* the method,
and the references they are tested against (pytorch-grad-cam, Captum) do that with
``F.interpolate``; these helpers reproduce its index arithmetic so the results agree to
float precision.  Bilinear resizing is separable, so it is done as two small matrix
products ``Ry @ x @ Rx.T`` (exact, and fast for feature maps).

With ``align_corners=False`` (the default) bilinear resizing uses half-pixel centres,
which for upsampling is also what ``cv2.resize(..., INTER_LINEAR)`` does.
"""

from __future__ import annotations

import numpy as np


def _bilinear_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """``n_out x n_in`` interpolation weights along one axis (torch's ``upsample_bilinear2d``)."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = dst * scale
    else:
        scale = n_in / n_out
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def resize_bilinear(x: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Bilinearly resize the last two axes of ``x`` to ``size = (H, W)``.

    Matches ``F.interpolate(x, size, mode="bilinear", align_corners=align_corners)``
    (no antialiasing); ``align_corners=True`` is ``nn.UpsamplingBilinear2d``.
    """
    x = np.asarray(x)
    h, w = x.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    ry = _bilinear_matrix(h, out_h, align_corners)
    rx = _bilinear_matrix(w, out_w, align_corners)
    out = np.einsum("Hh,...hw,Ww->...HW", ry, x.astype(np.float64, copy=False), rx, optimize=True)
    return out.astype(np.float32)


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes, as ``F.interpolate(mode="nearest")``.

    torch picks ``src = floor(dst * (in / out))`` computed in float32; so do we.
    """
    x = np.asarray(x)
    h, w = x.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])

    def index(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, n_in - 1)

    return x[..., index(h, out_h)[:, None], index(w, out_w)[None, :]]


def resize(x: np.ndarray, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = False) -> np.ndarray:
    """Resize the last two axes of ``x`` with ``mode`` ``"bilinear"`` or ``"nearest"``."""
    if mode == "bilinear":
        return resize_bilinear(x, size, align_corners=align_corners)
    if mode == "nearest":
        return resize_nearest(x, size)
    raise ValueError(f"unknown interpolation mode {mode!r}; use 'bilinear' or 'nearest'")
