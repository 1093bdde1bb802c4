"""XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312).

``w_k = sum_ij (A_k[i, j] / sum_ab A_k[a, b]) * dY_c/dA_k[i, j]`` (Eq. 7);
map ``= ReLU(sum_k w_k A_k)``.  A channel whose activations sum to 0 gets weight 0
(pytorch-grad-cam adds ``1e-7`` to the sum instead; the two agree to float precision).
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM


class XGradCAM(BaseCAM):
    name = "xgradcam"

    def channel_weights(self, batch):
        a = batch[contract.ACTIVATIONS].astype(np.float64)
        g = batch[contract.GRAD_ACTIVATIONS].astype(np.float64)
        num = (a * g).sum(axis=(2, 3))
        den = a.sum(axis=(2, 3))
        ok = den != 0
        return np.where(ok, num / np.where(ok, den, 1.0), 0.0).astype(np.float32)
