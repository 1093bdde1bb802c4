"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391).

``w_k = mean_ij dY_c/dA_k[i, j]`` (global-average-pooled gradients, Eq. 1);
map ``= ReLU(sum_k w_k A_k)`` (Eq. 2).  Same as pytorch-grad-cam ``GradCAM`` and Captum
``LayerGradCam(relu_attributions=True)``.
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM


class GradCAM(BaseCAM):
    name = "gradcam"

    def channel_weights(self, batch):
        return batch[contract.GRAD_ACTIVATIONS].mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
