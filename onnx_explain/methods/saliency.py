"""Saliency (Simonyan et al., ICLR-W 2014, arXiv:1312.6034).

Attribution ``|dY_c/dX|`` (Captum ``Saliency(abs=True)``; ``abs=False`` keeps the sign);
map = its maximum over the colour channels (``reduction="max_abs"``, the paper's rule,
Sec. 3.1).
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import Forward, InputGradientMethod


class Saliency(InputGradientMethod):
    name = "saliency"
    requires = (contract.GRAD_INPUT,)
    default_reduction = "max_abs"

    def __init__(self, forward: Forward, *, abs: bool = True, reduction: str | None = None):
        super().__init__(forward, reduction=reduction)
        self.abs = bool(abs)

    def input_attribution(self, batch):
        g = batch[contract.GRAD_INPUT]
        return np.abs(g) if self.abs else g
