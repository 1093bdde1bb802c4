"""LayerCAM (Jiang et al., IEEE TIP 2021, doi:10.1109/TIP.2021.3089943).

map ``= ReLU(sum_k ReLU(dY_c/dA_k) * A_k)`` (Eq. 4-5: each location weighted by its own
positive gradient), as pytorch-grad-cam ``LayerCAM``.
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM


class LayerCAM(BaseCAM):
    name = "layercam"

    def cam_image(self, batch):
        a = batch[contract.ACTIVATIONS]
        g = batch[contract.GRAD_ACTIVATIONS]
        return (np.maximum(g, 0).astype(np.float64) * a).sum(axis=1).astype(np.float32), None
