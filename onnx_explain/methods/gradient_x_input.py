"""Gradient x Input (Shrikumar et al., 2016, arXiv:1605.01713).

Attribution ``X * dY_c/dX`` (Captum ``InputXGradient``); map ``= |sum over channels|``
(``reduction="abs_sum"``, Captum ``visualize_image_attr``'s default: channel sum then
``sign="absolute_value"``).
"""

from __future__ import annotations

from onnx_explain import contract
from onnx_explain.methods.base import InputGradientMethod


class GradientXInput(InputGradientMethod):
    name = "gradient_x_input"
    requires = (contract.GRAD_INPUT,)
    default_reduction = "abs_sum"

    def input_attribution(self, batch):
        return batch["inputs"] * batch[contract.GRAD_INPUT]
