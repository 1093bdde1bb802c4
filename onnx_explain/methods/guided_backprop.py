"""Guided Backpropagation (Springenberg et al., ICLR-W 2015, arXiv:1412.6806).

Attribution = the guided input gradient (every ReLU passes back only positive gradient
where its input was positive), the model output ``guided_grad_input`` -- Captum
``GuidedBackprop``; map ``= |sum over channels|`` (``reduction="abs_sum"``, Captum's
visualisation default).
"""

from __future__ import annotations

from onnx_explain import contract
from onnx_explain.methods.base import InputGradientMethod


class GuidedBackprop(InputGradientMethod):
    name = "guided_backprop"
    requires = (contract.GUIDED_GRAD_INPUT,)
    default_reduction = "abs_sum"

    def input_attribution(self, batch):
        return batch[contract.GUIDED_GRAD_INPUT]
