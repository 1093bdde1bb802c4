"""Reference architectures: the models the demo, the tests and the benchmarks use.

Each family lives in its own file and is written from scratch (no torchvision), with
torchvision's module names so its ``state_dict`` files load unchanged and the usual
target-layer paths (``layer4``, ``features.denseblock4``...) work. ``efficientnet_lite0``
is the pretrained default; the others get a deterministic random initialisation (see
:func:`build`) and take ``num_classes``. Every model accepts small inputs (64x64 and up;
EfficientNet's TF "same" pads are fixed for 224, which gives the right pads at any multiple
of 32) so tests stay fast.

``imagenet_labels.json`` lists the 1000 ImageNet-1k class names in index order: the first
lemma of each synset, built from ``timm/data/_info/imagenet_synsets.txt`` and
``imagenet_synset_to_lemma.txt`` of the ``timm`` 1.0.31 wheel on PyPI (Apache-2.0;
WordNet lemmas). It ships with the package: nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnx_explain.contract import Preprocess

from .convnext import convnext_nano, convnext_tiny
from .densenet import densenet121
from .efficientnet import efficientnet_lite0
from .mobilenet import mobilenet_v2, mobilenet_v3_small
from .resnet import resnet18, resnet50
from .squeezenet import squeezenet1_1
from .vgg import vgg16_bn

DEFAULT_MODEL = "efficientnet_lite0"

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16_bn": vgg16_bn,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "densenet121": densenet121,
    "squeezenet1_1": squeezenet1_1,
    "convnext_tiny": convnext_tiny,
    "convnext_nano": convnext_nano,
    "efficientnet_lite0": efficientnet_lite0,
}

# Models whose factory loads real (ImageNet) weights by default.
PRETRAINED = frozenset({"efficientnet_lite0"})

# The usual Grad-CAM target of each model, as a torch module path.
DEFAULT_LAYERS: dict[str, str] = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg16_bn": "features.42",
    "mobilenet_v2": "features.18",
    "mobilenet_v3_small": "features.12",
    "densenet121": "features.denseblock4",
    "squeezenet1_1": "features.12",
    "convnext_tiny": "features.7",
    "convnext_nano": "features.7",
    "efficientnet_lite0": "_head_act",
}

# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 of 0..255 RGB pixels, the
# whole image stretched to 224x224. Measured on skimage's chelsea (tests/test_models.py),
# "Egyptian cat" (285): stretch + (x-127)/128 p=0.785 (cv2 INTER_LINEAR; 0.781 INTER_AREA);
# stretch + ImageNet mean/std 0.771; resize-256 + centre-crop-224 only 0.36-0.40 with either.
_LITE_PREPROCESS = dict(scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), resize="stretch")


def names() -> list[str]:
    return sorted(MODELS)


def build(name: str, weights: str | Path | dict[str, torch.Tensor] | None = None, *, seed: int = 0,
          **kwargs: Any) -> nn.Module:
    """Build a reference model in eval mode.

    ``weights``: a ``state_dict`` (or a file holding one, loaded with ``weights_only``)
    put onto the model strictly. Without it, pretrained models load their packaged
    weights and the others get a random initialisation that is a function of ``seed``
    alone (see :func:`exercise_init`). ``kwargs`` go to the factory (``num_classes``...).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(names())}")
    factory = MODELS[name]
    if weights is not None and name in PRETRAINED:
        kwargs.setdefault("pretrained", False)  # don't load what is about to be overwritten
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(**kwargs)
        pretrained = name in PRETRAINED and kwargs.get("pretrained", True)
        if weights is None and not pretrained:
            exercise_init(model)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, weights: str | Path | dict[str, torch.Tensor]) -> nn.Module:
    """Load a ``state_dict`` (or a ``.pt``/``.pth`` file holding one) strictly onto ``model``."""
    state = weights
    if not isinstance(weights, dict):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (pickle errors come in many types)
            raise ValueError(f"{path}: cannot read a state_dict from this file ({e})") from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]  # a training checkpoint
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights do not fit the model: {e}") from e
    return model


@torch.no_grad()
def exercise_init(model: nn.Module, batch: int = 4, size: int = 64) -> nn.Module:
    """Make a freshly initialised model numerically "alive", deterministically (global RNG).

    A fresh BatchNorm is the identity (mean 0, var 1, weight 1, bias 0) and ConvNeXt's
    layer scale starts at 1e-6: both would hide those ops from the numbers the tests
    compare, and un-normalised deep nets blow up. So: BatchNorm running statistics are
    measured on one batch of noise (data-dependent init, well-scaled activations), then
    the BN affine parameters and any layer scale are drawn at random.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        saved = [(m.momentum, m.training) for m in bns]
        model.train()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
        model(torch.rand(batch, 3, size, size) * 4 - 2)
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum
        for m in bns:
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    for name, p in model.named_parameters():
        if name.endswith("layer_scale"):
            p.uniform_(0.2, 1.0)
    return model.eval()


def default_preprocess(name: str, input_size: int | tuple[int, int] | None = None) -> Preprocess:
    """How images are prepared for ``name`` (RGB, NCHW).

    The torchvision ImageNet recipe (shorter side to 256/224 of the crop, centre crop,
    ImageNet mean/std) for the randomly initialised models; EfficientNet-Lite0's
    checkpoint wants TF-Lite's: the whole image stretched, ``(x - 127) / 128``.
    ``input_size`` (default 224) is the crop; the resize keeps the 256/224 ratio.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in models: {', '.join(names())}")
    size = input_size or 224
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if name == "efficientnet_lite0":
        return Preprocess(size=(h, w), **_LITE_PREPROCESS)
    return Preprocess(size=(h, w), resize="center_crop", resize_shorter=round(min(h, w) * 256 / 224))


@functools.lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    return tuple(json.loads((Path(__file__).parent / "imagenet_labels.json").read_text(encoding="utf-8")))


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (index 281 "tabby", 285 "Egyptian cat")."""
    return list(_imagenet_labels())


def default_labels(name: str, num_classes: int = 1000) -> list[str] | None:
    """Class names for ``name`` with ``num_classes`` outputs: ImageNet's for 1000, else ``None``."""
    return imagenet_labels() if num_classes == 1000 else None
