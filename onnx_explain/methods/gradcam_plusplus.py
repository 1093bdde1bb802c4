"""Grad-CAM++ (Chattopadhyay et al., WACV 2018, arXiv:1710.11063).

With ``g = dY_c/dA`` (the exponential-score closed form of the paper, Eq. 19):

    alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab * g_kij^3)
    w_k       = sum_ij alpha_kij * ReLU(g_kij)

and map ``= ReLU(sum_k w_k A_k)``.  Where the denominator is 0 (only where ``g == 0``
for non-negative activations) alpha is 0, as in the paper's reference code.

``eps`` (default 0) is added to the denominator; pytorch-grad-cam's ``GradCAMPlusPlus``
uses ``eps=1e-6`` and zeroes alpha where ``g == 0`` -- pass ``eps=1e-6`` to reproduce it
exactly (the eps is *not* negligible: logit gradients w.r.t. a late layer are often
~1e-3, so ``g^2`` is of the order of eps).
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM, Forward


class GradCAMPlusPlus(BaseCAM):
    name = "gradcam++"

    def __init__(self, forward: Forward, *, eps: float = 0.0, relu: bool = True):
        super().__init__(forward, relu=relu)
        self.eps = float(eps)

    def channel_weights(self, batch):
        a = batch[contract.ACTIVATIONS].astype(np.float64)
        g = batch[contract.GRAD_ACTIVATIONS].astype(np.float64)
        g2 = g * g
        g3 = g2 * g
        sum_a = a.sum(axis=(2, 3), keepdims=True)
        den = 2.0 * g2 + sum_a * g3 + self.eps
        ok = (g != 0) & (den != 0)
        alpha = np.where(ok, g2 / np.where(ok, den, 1.0), 0.0)
        return (alpha * np.maximum(g, 0.0)).sum(axis=(2, 3)).astype(np.float32)
