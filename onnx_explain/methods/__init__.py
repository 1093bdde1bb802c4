"""Explanation methods, in numpy, over a model runner (:class:`~onnx_explain.methods.base.Forward`).

Captum-shaped: ``METHODS[name](forward, **options).attribute(inputs, target,
batch_size=16, progress=None)`` returns an :class:`Attribution` with a raw map per image;
normalise with :func:`normalize01` and resize to the image in the caller.

CAM family (feature-map resolution; pytorch-grad-cam-shaped, each overrides only its
channel-weighting rule): ``cam``, ``gradcam``, ``gradcam++``, ``xgradcam``, ``hirescam``,
``layercam``, ``eigencam``, ``scorecam``.  Input-space (input resolution):
``saliency``, ``gradient_x_input``, ``smoothgrad``, ``integrated_gradients``,
``guided_backprop``, ``guided_gradcam``.
"""

from __future__ import annotations

from typing import Any

from onnx_explain.methods.base import (
    LOGITS,
    PROBABILITIES,
    REDUCTIONS,
    Attribution,
    BaseCAM,
    Forward,
    InputGradientMethod,
    Method,
    ProgressCallback,
    normalize01,
    reduce_channels,
)
from onnx_explain.methods.cam import CAM
from onnx_explain.methods.eigencam import EigenCAM
from onnx_explain.methods.gradcam import GradCAM
from onnx_explain.methods.gradcam_plusplus import GradCAMPlusPlus
from onnx_explain.methods.gradient_x_input import GradientXInput
from onnx_explain.methods.guided_backprop import GuidedBackprop
from onnx_explain.methods.guided_gradcam import GuidedGradCAM
from onnx_explain.methods.hirescam import HiResCAM
from onnx_explain.methods.integrated_gradients import IntegratedGradients
from onnx_explain.methods.interpolate import resize, resize_bilinear, resize_nearest
from onnx_explain.methods.layercam import LayerCAM
from onnx_explain.methods.saliency import Saliency
from onnx_explain.methods.scorecam import ScoreCAM
from onnx_explain.methods.smoothgrad import SmoothGrad
from onnx_explain.methods.xgradcam import XGradCAM

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        CAM,
        GradCAM,
        GradCAMPlusPlus,
        XGradCAM,
        HiResCAM,
        LayerCAM,
        EigenCAM,
        ScoreCAM,
        Saliency,
        GradientXInput,
        SmoothGrad,
        IntegratedGradients,
        GuidedBackprop,
        GuidedGradCAM,
    )
}


def create(name: str, forward: Forward, **options: Any) -> Method:
    """``METHODS[name](forward, **options)`` with a clear error for an unknown name."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown explanation method {name!r}; choose one of {', '.join(METHODS)}") from None
    return cls(forward, **options)


__all__ = [
    "METHODS",
    "create",
    "Forward",
    "Attribution",
    "Method",
    "BaseCAM",
    "InputGradientMethod",
    "ProgressCallback",
    "LOGITS",
    "PROBABILITIES",
    "REDUCTIONS",
    "normalize01",
    "reduce_channels",
    "resize",
    "resize_bilinear",
    "resize_nearest",
    *(cls.__name__ for cls in METHODS.values()),
]
