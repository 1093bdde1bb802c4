"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299).

Per image, the activations as a ``(h w) x K`` matrix are centred per channel and
projected on their first principal component (first right singular vector); the
projection, reshaped to ``h x w``, is the map.  Class-agnostic: no gradients needed.

SVD fixes the component only up to sign.  ``sign_correction=True`` (default) flips the
map when ``|min| > |max|`` so the salient region is positive -- the rule of Seg-Eigen-CAM
(Chung & Ying, Appl. Sci. 2025, Eq. 13), also pytorch-grad-cam's
``get_2d_projection_with_sign_correction``.  Then ReLU (``relu=True``), as
pytorch-grad-cam ``EigenCAM``.
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM, Forward


def first_component_projection(acts: np.ndarray, sign_correction: bool = True) -> np.ndarray:
    """``N x K x h x w`` -> ``N x h x w`` projection on the first principal component."""
    n, k, h, w = acts.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    for i in range(n):
        m = np.nan_to_num(acts[i].astype(np.float64)).reshape(k, h * w).T  # (h w) x K
        m = m - m.mean(axis=0, keepdims=True)
        if not np.any(m):
            continue  # constant activations: no principal direction, zero map
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        proj = m @ vt[0]
        if sign_correction and abs(proj.min()) > abs(proj.max()):
            proj = -proj
        out[i] = proj.reshape(h, w)
    return out


class EigenCAM(BaseCAM):
    name = "eigencam"
    requires = (contract.ACTIVATIONS,)

    def __init__(self, forward: Forward, *, sign_correction: bool = True, relu: bool = True):
        super().__init__(forward, relu=relu)
        self.sign_correction = bool(sign_correction)

    def cam_image(self, batch):
        return first_component_projection(batch[contract.ACTIVATIONS], self.sign_correction), None
