"""HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891).

map ``= ReLU(sum_k dY_c/dA_k * A_k)`` (element-wise product, no spatial averaging of the
gradient), as pytorch-grad-cam ``HiResCAM``.
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM


class HiResCAM(BaseCAM):
    name = "hirescam"

    def cam_image(self, batch):
        a = batch[contract.ACTIVATIONS]
        g = batch[contract.GRAD_ACTIVATIONS]
        return (a.astype(np.float64) * g).sum(axis=1).astype(np.float32), None
