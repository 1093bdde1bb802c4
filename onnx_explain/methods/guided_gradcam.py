"""Guided Grad-CAM (Selvaraju et al., ICCV 2017, Sec. 3.1).

Attribution = guided backpropagation (``N x C x H x W``) times the Grad-CAM map
``ReLU(sum_k mean(dY_c/dA_k) A_k)`` (raw, not normalised) upsampled to the input size --
Captum ``GuidedGradCam``.  ``interpolate``: ``"bilinear"`` (default, the paper) or
``"nearest"`` (Captum's default ``interpolate_mode``); both follow ``F.interpolate``.
Map ``= |sum over channels|`` (``reduction="abs_sum"``).
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import Forward, InputGradientMethod
from onnx_explain.methods.interpolate import resize


class GuidedGradCAM(InputGradientMethod):
    name = "guided_gradcam"
    requires = (contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS, contract.GUIDED_GRAD_INPUT)
    default_reduction = "abs_sum"

    def __init__(self, forward: Forward, *, interpolate: str = "bilinear", reduction: str | None = None):
        super().__init__(forward, reduction=reduction)
        if interpolate not in ("bilinear", "nearest"):
            raise ValueError(f"interpolate must be 'bilinear' or 'nearest', got {interpolate!r}")
        self.interpolate = interpolate

    def input_attribution(self, batch):
        a = batch[contract.ACTIVATIONS]
        g = batch[contract.GRAD_ACTIVATIONS]
        weights = g.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
        cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, a, optimize=True), 0)
        guided = batch[contract.GUIDED_GRAD_INPUT]
        up = resize(cam, guided.shape[2:], mode=self.interpolate)
        return guided * up[:, None]
