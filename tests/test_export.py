"""The export step: torch module paths -> ONNX values, BatchNorm kept on request, weights,
factories, metadata, and the hand-over to the augmenter."""

from __future__ import annotations

import functools
import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnx_explain import contract
from onnx_explain.export import (
    ExportResult,
    LayerNameError,
    export_model,
    export_plain,
    load_factory,
    module_paths,
    resolve_model,
    set_plain_metadata,
    translate_layer,
)
from onnx_explain.models import build

SIZE = 64


@functools.cache
def _resnet18(keep_batchnorm: bool = False) -> ExportResult:
    return export_plain("resnet18", input_size=SIZE, keep_batchnorm=keep_batchnorm, model_kwargs=dict(num_classes=10))


def _run(proto: onnx.ModelProto, x: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    known = {o.name for o in proto.graph.output}
    for name in outputs:
        if name not in known:
            proto.graph.output.add().name = name
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    image = next(i.name for i in session.get_inputs() if i.name != contract.TARGET)
    feeds = {image: x}
    if any(i.name == contract.TARGET for i in session.get_inputs()):
        feeds[contract.TARGET] = np.full(len(x), -1, np.int64)
    return session.run(outputs, feeds)


def _hooked(module: nn.Module, path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, output of module ``path``) from torch."""
    store = {}
    handle = dict(module.named_modules())[path].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.no_grad():
            logits = module(torch.from_numpy(x))
    finally:
        handle.remove()
    return logits.numpy(), store["a"].numpy()


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def _x(batch: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32)


# -- module path -> ONNX value ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["layer4", "layer4.0.downsample", "layer4.1.relu", "layer2.1"])
def test_resnet18_module_paths_map_to_their_outputs(path: str) -> None:
    """Dynamo export: the value found for a module path, taken as an output, equals torch's
    forward-hook output (``layer4.1.relu`` is called twice: the hook keeps the last call)."""
    result = _resnet18()
    value = translate_layer(result.model, result.module, path)
    x = _x(3)
    logits, activation = _run(result.model, x, ["logits", value])
    expected_logits, expected = _hooked(result.module, path, x)
    _close(logits, expected_logits)
    _close(activation, expected)
    if path == "layer4":
        assert activation.shape == (3, 512, SIZE // 32, SIZE // 32)


def test_layer_names_values_and_errors() -> None:
    result = _resnet18()
    proto, module = result.model, result.module
    value = translate_layer(proto, module, "layer4")
    assert translate_layer(proto, module, value) == value  # an ONNX value name passes through
    assert "layer4" in module_paths(proto) and "layer4.1.bn2" in module_paths(proto)
    # conv1 was folded into the Conv credited to bn1: no value of its own, and we say so
    with pytest.raises(LayerNameError, match=r"layer4\.0\.conv1.*fused.*layer4\.0\.bn1"):
        translate_layer(proto, module, "layer4.0.conv1")
    with pytest.raises(LayerNameError, match=r"'layer5'.*did you mean.*layer4"):
        translate_layer(proto, module, "layer5")
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # dynamo folds BN
    for node in proto.graph.node:  # exporting machine's paths don't ship in the file
        assert not any(p.key == "pkg.torch.onnx.stack_trace" for p in node.metadata_props)


def test_keep_batchnorm() -> None:
    """BatchNormalization nodes stay (for the BN gradient rule); logits and module paths
    still agree with torch (the TorchScript exporter names nodes by scope)."""
    result = _resnet18(keep_batchnorm=True)
    proto, module = result.model, result.module
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 20 and ops.count("Conv") == 20
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for batch in (1, 3):
        x = _x(batch, seed=batch)
        value = translate_layer(proto, module, "layer4")
        logits, activation = _run(proto, x, ["logits", value])
        expected_logits, expected = _hooked(module, "layer4", x)
        _close(logits, expected_logits)
        _close(activation, expected)


class _Tiny(nn.Module):
    """Conv+BN (fused by dynamo), a ModuleList (never called: no TorchScript scope), a
    ZeroPad2d (folded into asymmetric Conv pads) and a ReLU module used twice."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.act = nn.ReLU()
        self.blocks = nn.ModuleList([nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 8, 3, 2)),
                                     nn.Conv2d(8, 16, 3, padding=1)])
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        for block in self.blocks:
            x = self.act(block(x))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_tiny_model_paths(dynamo: bool) -> None:
    torch.manual_seed(0)
    result = export_plain(_Tiny().eval(), input_size=16, dynamo=dynamo)
    assert result.labels is None and result.preprocess.size == (16, 16)
    x = _x(2, 16)
    for path in ("stem", "blocks.0", "blocks.1", "act"):
        value = translate_layer(result.model, result.module, path)
        (activation,) = _run(result.model, x, [value])
        _close(activation, _hooked(result.module, path, x)[1])


# -- models, factories, weights ------------------------------------------------------------


def test_load_factory_and_errors(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models_for_export.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        def net(num_classes=3):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        NOT_CALLABLE = 3
        def not_a_module():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    module, name = resolve_model("my_models_for_export:net")
    assert name is None and isinstance(module, nn.Module) and not module.training
    assert load_factory("my_models_for_export:net")(5)[-1].out_features == 5
    for spec, match in [("no_such_module_xyz:net", "no_such_module_xyz:net.*cannot import"),
                        ("my_models_for_export:nope", "my_models_for_export:nope.*no attribute 'nope'"),
                        ("my_models_for_export:NOT_CALLABLE", "not callable"),
                        ("my_models_for_export", "expected 'package.module:factory'")]:
        with pytest.raises(ValueError, match=match):
            load_factory(spec)
    with pytest.raises(ValueError, match="returned int, not a torch.nn.Module"):
        resolve_model("my_models_for_export:not_a_module")
    with pytest.raises(ValueError, match="unknown model 'resnet_nine'"):
        resolve_model("resnet_nine")


def test_weights(tmp_path) -> None:
    trained = build("resnet18", num_classes=7, seed=3)
    path = tmp_path / "r18.pt"
    torch.save(trained.state_dict(), path)
    module, _ = resolve_model("resnet18", weights=path)  # 7 classes read off the weights
    assert module.fc.out_features == 7
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), trained.state_dict().values()))
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "ckpt.pt")  # a training checkpoint
    assert resolve_model("resnet18", weights=tmp_path / "ckpt.pt")[0].fc.out_features == 7
    module, _ = resolve_model(build("resnet18", num_classes=7), weights=trained.state_dict())
    assert torch.equal(module.fc.weight, trained.fc.weight)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resolve_model("resnet18", weights=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt.*state_dict"):
        resolve_model("resnet18", weights=tmp_path / "junk.pt")
    torch.save(build("squeezenet1_1", num_classes=7).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="weights do not fit"):
        resolve_model("resnet18", weights=tmp_path / "other.pt")


def test_set_plain_metadata_replaces() -> None:
    proto = onnx.ModelProto()
    proto.metadata_props.add(key="keep.me", value="1")
    proto.metadata_props.add(key=contract.METADATA_PREFIX + "labels", value='["old"]')
    pre = contract.Preprocess(size=(32, 48))
    set_plain_metadata(proto, pre, ["a", "b"])
    props = {p.key: p.value for p in proto.metadata_props}
    assert len(proto.metadata_props) == 3 and props["keep.me"] == "1"
    assert contract.read_plain_metadata(props) == {"preprocess": pre, "labels": ["a", "b"]}


# -- the whole export ------------------------------------------------------------------------


def test_export_model_hands_over_to_the_augmenter(tmp_path) -> None:
    """A module path as ``layer``, a file written, the explain model's activations are the
    module's output, metadata (preprocess, labels, target layer) carried through."""
    torch.manual_seed(1)
    model = _Tiny(num_classes=3).eval()
    out = tmp_path / "sub" / "tiny.onnx"
    labels = ["cat", "dog", "bird"]
    result = export_model(model, out, input_size=16, layer="blocks.0", labels=labels,
                          input_gradients=True, guided=False, gradcam=False)
    assert result.path == out and out.is_file() and not list(out.parent.glob("*.part"))
    assert result.module_path == "blocks.0" and result.layer == translate_layer(result.model, model, "blocks.0")
    saved = onnx.load(str(out))
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in saved.metadata_props})
    assert meta is not None and meta.target_layer == result.layer
    assert meta.labels == labels and meta.preprocess == contract.Preprocess(size=(16, 16))
    names = {o.name for o in saved.graph.output}
    assert {contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS, contract.GRAD_INPUT} <= names
    x = _x(2, 16)
    logits, activation = _run(saved, x, ["logits", contract.ACTIVATIONS])
    expected_logits, expected = _hooked(model, "blocks.0", x)
    _close(logits, expected_logits)
    _close(activation, expected)
    assert json.loads(json.dumps(meta.outputs))  # roles are listed
