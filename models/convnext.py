"""ConvNeXt (Liu et al., 2022), written from scratch: ``convnext_tiny`` and a slimmer ``convnext_nano``.

Why: the "modern CNN" ops that classic ResNet-era gradient rules miss: depthwise 7x7
convs, ``LayerNormalization`` over channels (a ``Transpose`` to channels-last and back),
``Gelu`` MLPs as ``MatMul`` on channels-last tensors, a learned per-channel layer scale
(``Mul``) and a LayerNorm in the head. Module names follow torchvision's
(``features.N`` alternating stem/downsample and stages, ``classifier``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class GlobalAvgPool(nn.Module):
    """Mean over H, W (keepdim). ``nn.AdaptiveAvgPool2d(1)`` would do, but the blocks hand
    it a channels-last-strided tensor (their closing permute) and the dynamo exporter then
    reproduces the strides with an ``as_strided`` -> flat ``Gather`` with computed indices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class CNBlock(nn.Module):
    """dwconv7x7 -> LayerNorm -> Linear(4d) -> GELU -> Linear(d), scaled, plus the input."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.block(x)


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)))
            layers.append(nn.Sequential(*[CNBlock(dim) for _ in range(depth)]))
        self.features = nn.Sequential(*layers)
        self.avgpool = GlobalAvgPool()
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1),
                                        nn.Linear(dims[-1], num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def convnext_tiny(num_classes: int = 1000) -> ConvNeXt:
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), num_classes)


def convnext_nano(num_classes: int = 1000) -> ConvNeXt:
    """timm's "nano" widths and depths: 15 M parameters instead of 28 M."""
    return ConvNeXt((2, 2, 8, 2), (80, 160, 320, 640), num_classes)
