"""Faithfulness metrics: does the model's confidence follow the heatmap?

Deletion and insertion (RISE, Petsiuk et al., 2018)
---------------------------------------------------
Pixels are ranked by decreasing saliency (ties keep row-major order). The curve has
``n_steps + 1`` points; at point ``i`` the ``round(i * H * W / n_steps)`` most salient
pixels have been changed, and ``x_i = i / n_steps`` is that fraction of the image.

* **deletion** starts from the image and replaces the changed pixels by a
  ``baseline`` (0 by default: zero in the space of the array given — black for RGB
  pixels, the mean colour for a normalised input tensor). A faithful map makes the
  target probability fall fast: **lower AUC is better**.
* **insertion** starts from a blurred copy of the image (Gaussian blur, as RISE's
  ``gkern(11, 5)`` at 224 px) and puts the original pixels back. A faithful map makes
  the probability rise fast: **higher AUC is better**.

The **AUC** is the area under ``y = p_target(x)`` for ``x`` in ``[0, 1]`` by the
trapezoidal rule, ``sum_i (x_{i+1} - x_i) (y_i + y_{i+1}) / 2`` — the same number as
RISE's ``(y.sum() - y[0]/2 - y[-1]/2) / (len(y) - 1)`` for equal steps.

The functions work on any ``H x W`` or ``H x W x C`` array (original RGB pixels or a
preprocessed, channels-last tensor) with a saliency map of the same ``H x W``; the
``predict`` callable receives the step images stacked as one array
(``N x H x W [x C]``, the dtype of ``image``), ``batch_size`` at a time, and returns
probabilities ``N x classes``.

Average drop / increase in confidence (Grad-CAM++, Chattopadhyay et al., 2018)
------------------------------------------------------------------------------
The explanation map is ``E_c = heatmap * image`` (:func:`explanation_map`; with a
``baseline`` b it is ``b + heatmap * (image - b)``, which for b = the preprocessing
mean equals the product taken in the normalised input space). With ``Y_c`` the
probability on the image and ``O_c`` on ``E_c``:

* average drop = ``mean(max(0, Y_c - O_c) / Y_c) * 100`` (lower is better);
* increase in confidence = ``100 * (share of images with O_c > Y_c)`` (higher is better).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import cv2
import numpy as np

__all__ = [
    "Curve",
    "auc",
    "saliency_order",
    "deletion",
    "insertion",
    "rise_blur",
    "explanation_map",
    "confidence_change",
    "average_drop",
    "increase_in_confidence",
    "baseline_from_preprocess",
]

Predict = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Curve:
    """A deletion or insertion curve: ``x`` fraction of pixels changed, ``y`` target
    probability, ``auc`` the trapezoidal area under it."""

    kind: str
    x: np.ndarray
    y: np.ndarray
    auc: float


def auc(y: Sequence[float], x: Sequence[float] | None = None) -> float:
    """Trapezoidal area under ``y(x)``; ``x`` defaults to ``n`` equal steps over [0, 1]."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError("a curve needs at least two points")
    x = np.linspace(0.0, 1.0, y.size) if x is None else np.asarray(x, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def saliency_order(saliency) -> np.ndarray:
    """Flat pixel indices by decreasing saliency; ties in row-major order."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"saliency must be a 2-D (H x W) map, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains NaN or infinite values")
    return np.argsort(-s.ravel(), kind="stable")


def _check(image, saliency) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be H x W or H x W x C, got shape {image.shape}")
    s = np.asarray(saliency)
    if s.shape != image.shape[:2]:
        raise ValueError(
            f"saliency shape {s.shape} differs from the image's {image.shape[:2]}: "
            "bring the heatmap to the image resolution first"
        )
    return image, s


def _cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    if np.issubdtype(like.dtype, np.integer):
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(like.dtype)
    return np.asarray(values, dtype=like.dtype)


def _full_like(image: np.ndarray, value) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0 or v.shape == image.shape:
        out = np.broadcast_to(v, image.shape)
    elif image.ndim == 3 and v.shape == (image.shape[2],):
        out = np.broadcast_to(v, image.shape)
    else:
        raise ValueError(f"baseline of shape {v.shape} does not fit an image of shape {image.shape}")
    return _cast_like(out, image)


def _steps(n_pixels: int, n_steps: int) -> np.ndarray:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return np.rint(np.arange(n_steps + 1) * (n_pixels / n_steps)).astype(np.int64)


def _run_curve(
    kind: str,
    start: np.ndarray,
    finish: np.ndarray,
    order: np.ndarray,
    predict: Predict,
    target: int,
    n_steps: int,
    batch_size: int,
) -> Curve:
    """Probabilities along the path from ``start`` to ``finish``, pixels in ``order``."""
    hgt, wid = start.shape[:2]
    n = hgt * wid
    counts = _steps(n, n_steps)
    start_px = start.reshape(n, -1)
    finish_px = finish.reshape(n, -1)
    ys: list[np.ndarray] = []
    batch_size = max(1, int(batch_size))
    current = start_px.copy()  # changed incrementally: step i adds order[counts[i-1]:counts[i]]
    done = 0
    for lo in range(0, counts.size, batch_size):
        chunk = counts[lo : lo + batch_size]
        batch = np.empty((chunk.size,) + start.shape, dtype=start.dtype)
        for j, k in enumerate(chunk):
            idx = order[done:k]
            current[idx] = finish_px[idx]
            done = k
            batch[j] = current.reshape(start.shape)
        probs = np.asarray(predict(batch), dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != chunk.size:
            raise ValueError(f"predict returned shape {probs.shape} for a batch of {chunk.size} images (expected N x classes)")
        if not 0 <= target < probs.shape[1]:
            raise ValueError(f"target class {target} is out of range for {probs.shape[1]} classes")
        ys.append(probs[:, target])
    y = np.concatenate(ys)
    x = counts / float(n)
    return Curve(kind=kind, x=x, y=y, auc=auc(y, x))


def deletion(
    image,
    saliency,
    predict: Predict,
    target: int,
    n_steps: int = 100,
    baseline=0.0,
    batch_size: int = 16,
) -> Curve:
    """RISE deletion curve: remove the most salient pixels first (replace by ``baseline``:
    a scalar, one value per channel, or a whole image). Lower AUC is better."""
    image, s = _check(image, saliency)
    return _run_curve("deletion", image, _full_like(image, baseline), saliency_order(s), predict, int(target), n_steps, batch_size)


def rise_blur(image, sigma: float | None = None) -> np.ndarray:
    """Gaussian blur of RISE's insertion canvas.

    RISE blurs the 224 x 224 input with an 11 x 11 kernel of sigma 5; ``sigma=None``
    scales that to the image (``5 * max(H, W) / 224``) so the canvas looks the same
    once the image is resized to the network input. Borders are reflected (RISE pads
    with zeros, which darkens a rim of about 5 px).
    """
    image = np.asarray(image)
    if sigma is None:
        sigma = 5.0 * max(image.shape[:2]) / 224.0
    sigma = float(sigma)
    if sigma <= 0:
        return image.copy()
    k = 2 * int(round(sigma)) + 1  # 11 for sigma 5, as gkern(11, 5)
    src = image.astype(np.float32)
    out = cv2.GaussianBlur(src, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return _cast_like(out.reshape(image.shape), image)


def insertion(
    image,
    saliency,
    predict: Predict,
    target: int,
    n_steps: int = 100,
    blur_sigma: float | None = None,
    canvas=None,
    batch_size: int = 16,
) -> Curve:
    """RISE insertion curve: start from a blurred image (:func:`rise_blur`, or a given
    ``canvas``) and insert the original pixels, most salient first. Higher AUC is better."""
    image, s = _check(image, saliency)
    start = rise_blur(image, blur_sigma) if canvas is None else _full_like(image, canvas)
    return _run_curve("insertion", start, image, saliency_order(s), predict, int(target), n_steps, batch_size)


def explanation_map(image, heatmap, baseline=0.0) -> np.ndarray:
    """Grad-CAM++'s ``E_c = heatmap * image`` (generalised: ``b + heatmap * (image - b)``),
    in the dtype of ``image``. ``heatmap`` in [0, 1] at the image's resolution."""
    image, h = _check(image, heatmap)
    h = np.clip(np.asarray(h, dtype=np.float64), 0.0, 1.0)
    if image.ndim == 3:
        h = h[..., None]
    b = _full_like(image, baseline).astype(np.float64)
    return _cast_like(b + h * (image.astype(np.float64) - b), image)


def confidence_change(
    image, heatmap, predict: Predict, target: int, baseline=0.0
) -> tuple[float, float]:
    """``(Y_c, O_c)``: target probability on the image and on its explanation map."""
    image = np.asarray(image)
    e = explanation_map(image, heatmap, baseline)
    probs = np.asarray(predict(np.stack([image, e])), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != 2:
        raise ValueError(f"predict returned shape {probs.shape} for a batch of 2 images (expected N x classes)")
    return float(probs[0, target]), float(probs[1, target])


def average_drop(y, o) -> float:
    """Grad-CAM++ average drop in %: ``mean(max(0, Y - O) / Y) * 100``. Images with
    ``Y <= 0`` are left out (the ratio is undefined); NaN when none is left."""
    y = np.asarray(y, dtype=np.float64)
    o = np.asarray(o, dtype=np.float64)
    keep = y > 0
    if not np.any(keep):
        return float("nan")
    return float(np.mean(np.maximum(0.0, y[keep] - o[keep]) / y[keep]) * 100.0)


def increase_in_confidence(y, o) -> float:
    """Grad-CAM++ increase in confidence in %: share of images where ``O > Y``."""
    y = np.asarray(y, dtype=np.float64)
    o = np.asarray(o, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    return float(np.mean(o > y) * 100.0)


def baseline_from_preprocess(preprocess) -> np.ndarray:
    """The pixel value (0..255, per channel, in the image's colour order) that the
    preprocessing maps to zero: ``mean / scale``. Passing it as ``baseline`` makes the
    pixel-space deletion and explanation maps equal to those taken in the normalised
    input space (RISE and Grad-CAM++ worked there), up to the resampling of the resize. ``preprocess``: a
    :class:`onnx_explain.contract.Preprocess` or anything with ``mean`` and ``scale``."""
    mean = np.asarray(preprocess.mean, dtype=np.float64)
    scale = float(preprocess.scale)
    if scale == 0:
        raise ValueError("preprocess.scale is 0")
    color = getattr(preprocess, "color", "RGB")
    # The mean is given in the model's colour order; our images are RGB.
    if str(color).upper() == "BGR":
        mean = mean[::-1]
    return mean / scale
