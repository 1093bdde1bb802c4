"""The reference models: they build, run small, export with a dynamic batch and ONNX
Runtime agrees with torch; the pretrained EfficientNet-Lite0 sees the cat."""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnx_explain.contract import METADATA_PREFIX, Preprocess, read_plain_metadata
from onnx_explain.export import ExportResult, export_plain, translate_layer
from onnx_explain.models import (
    DEFAULT_LAYERS,
    DEFAULT_MODEL,
    MODELS,
    build,
    default_labels,
    default_preprocess,
    imagenet_labels,
)

REQUIRED = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
            "squeezenet1_1", "convnext_nano", "efficientnet_lite0"]
SMALL = 64  # test input size for the randomly initialised models
# small heads for the test models: VGG's 4096-wide MLP alone is 120 M parameters; a pool
# of input/32 keeps the adaptive pool the no-op it is at 224
KWARGS = {"vgg16_bn": dict(num_classes=10, classifier_width=256, pool_size=2), "efficientnet_lite0": {}}


# The dynamo exporter (the default) spends 8-20 s of CPU on each of the deeper models, most of
# it in torch.export's symbolic-shape work for the dynamic batch: the models below get the
# TorchScript exporter here, for a test time of about a minute (resnet18 is exported with
# dynamo in test_export.py). ONNX_EXPLAIN_SLOW_TESTS=1 exports every model with dynamo.
TORCHSCRIPT_HERE = set() if os.environ.get("ONNX_EXPLAIN_SLOW_TESTS") == "1" else {
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "densenet121"}


def _kwargs(name: str) -> dict:
    return KWARGS.get(name, dict(num_classes=10))


@functools.cache
def _exported(name: str) -> ExportResult:
    # the pretrained model is exported once, at its real size, for both the chelsea check
    # and the torch comparison
    size = 224 if name == "efficientnet_lite0" else SMALL
    return export_plain(name, input_size=size, model_kwargs=_kwargs(name), dynamo=name not in TORCHSCRIPT_HERE)


def _session(proto: onnx.ModelProto, extra_outputs: tuple[str, ...] = ()) -> ort.InferenceSession:
    if extra_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        for name in extra_outputs:
            proto.graph.output.add().name = name
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    # rtol against the tensor's own scale: float32 reassociation noise is relative to the
    # largest terms, not to each (possibly near-zero) element
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def test_registry() -> None:
    assert set(REQUIRED) <= set(MODELS)
    assert DEFAULT_MODEL == "efficientnet_lite0"
    assert set(DEFAULT_LAYERS) == set(MODELS)
    labels = imagenet_labels()
    assert len(labels) == 1000 and all(isinstance(s, str) and s for s in labels)
    assert labels[281] == "tabby" and labels[285] == "Egyptian cat" and labels[0] == "tench"
    assert default_labels("resnet18", 10) is None and default_labels("resnet18") == labels
    for name in MODELS:
        pre = default_preprocess(name, 96)
        assert isinstance(pre, Preprocess) and pre.size == (96, 96)
        assert Preprocess.from_json(pre.to_json()) == pre
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        build("resnet19")


def test_build_is_deterministic_and_alive() -> None:
    a, b, c = (build("mobilenet_v3_small", num_classes=10, seed=s) for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert not a.training
    # BatchNorm is not left as the identity: statistics measured, affine parameters drawn
    bn = a.features[1].block[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
    # and the global RNG is left alone
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build("squeezenet1_1", num_classes=10)
    assert torch.equal(torch.rand(3), expected)


def test_convnext_tiny_builds_and_runs_small() -> None:
    # convnext_nano is the one exported below (same code, fewer/narrower stages)
    model = build("convnext_tiny", num_classes=10)
    with torch.no_grad():
        y = model(torch.randn(2, 3, SMALL, SMALL))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert all(0.2 <= float(m.layer_scale.detach().min()) for m in model.modules() if hasattr(m, "layer_scale"))


@pytest.mark.parametrize("name", REQUIRED)
def test_export_matches_torch(name: str) -> None:
    """Export with a dynamic batch: ORT logits equal torch's at batch 1 and 3; the default
    target layer's module path maps to the value that equals torch's forward-hook output."""
    result = _exported(name)
    proto, module = result.model, result.module
    onnx.checker.check_model(proto)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    batch_dim = inp.type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert out.type.tensor_type.shape.dim[0].dim_param == batch_dim.dim_param

    meta = read_plain_metadata({p.key: p.value for p in proto.metadata_props})
    assert meta["preprocess"] == default_preprocess(name, result.input_size)
    assert (meta.get("labels") is not None) == (name == "efficientnet_lite0")
    assert not any(p.key == METADATA_PREFIX + "version" for p in proto.metadata_props)  # plain, not explain

    layer = translate_layer(proto, module, DEFAULT_LAYERS[name])
    hooked = {}
    handle = dict(module.named_modules())[DEFAULT_LAYERS[name]].register_forward_hook(
        lambda m, i, o: hooked.__setitem__("a", o.detach().numpy()))
    session = _session(proto, (layer,))
    size = result.input_size
    rng = np.random.default_rng(0)
    try:
        for batch in (1, 3):
            x = rng.uniform(-2, 2, (batch, 3, *size)).astype(np.float32)
            with torch.no_grad():
                expected = module(torch.from_numpy(x)).numpy()
            logits, activation = session.run(["logits", layer], {"input": x})
            assert logits.shape == expected.shape
            _close(logits, expected)
            assert activation.ndim == 4 and activation.shape[0] == batch
            _close(activation, hooked["a"])
    finally:
        handle.remove()


def _preprocess(rgb: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The Preprocess recipe in numpy/cv2 (INTER_LINEAR), for one RGB uint8 image -> 1xCxHxW."""
    h, w = pre.size
    if pre.resize == "stretch":
        img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    elif pre.resize == "center_crop":
        s = pre.resize_shorter / min(rgb.shape[:2])
        rh, rw = round(rgb.shape[0] * s), round(rgb.shape[1] * s)
        img = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR)
        top, left = (rh - h) // 2, (rw - w) // 2
        img = img[top:top + h, left:left + w]
    else:
        raise NotImplementedError(pre.resize)
    if pre.color == "BGR":
        img = img[..., ::-1]
    x = (img.astype(np.float32) * pre.scale - np.float32(pre.mean)) / np.float32(pre.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def test_efficientnet_lite0_sees_the_cat() -> None:
    """Pretrained default, exported at 224, run by ORT with the preprocessing written into
    its metadata: chelsea is an "Egyptian cat" (285) at p ~ 0.78."""
    skimage_data = pytest.importorskip("skimage.data")
    result = _exported("efficientnet_lite0")
    props = {p.key: p.value for p in result.model.metadata_props}
    meta = read_plain_metadata(props)
    pre = meta["preprocess"]
    assert pre.resize == "stretch" and pre.size == (224, 224) and pre.mean == (127.0,) * 3 and pre.std == (128.0,) * 3
    assert meta["labels"][285] == "Egyptian cat"

    x = _preprocess(skimage_data.chelsea(), pre)
    (logits,) = _session(result.model).run(["logits"], {"input": x})
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    assert int(p.argmax()) == 285
    assert abs(float(p[285]) - 0.78) < 0.05, float(p[285])
    assert {int(i) for i in np.argsort(p)[-3:]} == {281, 282, 285}  # tabby, tiger cat, Egyptian cat
