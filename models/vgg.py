"""VGG-16 with batch norm (Simonyan & Zisserman, 2014), written from scratch.

A plain Conv-BN-ReLU stack with five MaxPools and a three-layer MLP head (``Gemm``,
``Relu``): the textbook Grad-CAM model, usually explained at ``features.42`` (the last
ReLU, before the final MaxPool). Module names follow torchvision's ``vgg16_bn``.

``classifier_width`` and ``pool_size`` default to the original 4096 / 7x7 (138 M
parameters); smaller values keep test models light, and ``pool_size`` equal to the final
feature-map size (input/32) makes the adaptive pool a no-op at small inputs.
"""

from __future__ import annotations

import torch
from torch import nn

CFG_16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 1000, classifier_width: int = 4096, pool_size: int = 7) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool_size * pool_size, classifier_width),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(classifier_width, classifier_width),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(classifier_width, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(num_classes: int = 1000, classifier_width: int = 4096, pool_size: int = 7) -> VGG:
    return VGG(CFG_16, num_classes, classifier_width, pool_size)
