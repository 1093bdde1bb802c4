"""ONNX files from other producers augment with no flags and give autograd's gradients.

The corpus (``foreign_corpus.py``) is generated here: every architecture in ``models/``
through both torch exporters, dynamic height/width, opsets 9 and 11 with a final Softmax,
weights in ``Constant`` nodes with computed Reshape shapes, onnxslim's output, and
channels-last tf2onnx-style graphs. For each: the model's own outputs are unchanged bit for
bit, the chosen layer has a spatial extent, and ``grad_activations`` / ``grad_input`` equal
float64 torch autograd (relative L2 <= 1e-5; or within 3x torch float32's own error) on
images where float32 takes the exact ReLU / max-pool decisions.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from foreign_corpus import (TIMM_IDIOMS, KerasStyle, PaddleStyle, WithSoftmax, dynamo, slimmed, torchscript,
                            weights_in_constants)
from test_model_gradients import KWARGS, _assert_exact, _well_conditioned_inputs
from torch import nn
from torch_reference import autograd, run_explain

from onnx_explain import contract
from onnx_explain.augment import SmallTargetLayerWarning, augment_model, inspect_layers
from onnx_explain.errors import ModelError
from onnx_explain.export.exporter import resolve_model
from onnx_explain.models import MODELS

# One model per architecture family (ResNet-50 and ConvNeXt-Tiny are their families' larger
# members: tests/test_model_gradients.py covers them), all at 64 px to keep the suite fast;
# SqueezeNet at 67 px exercises its ceil-mode pooling.
ARCHITECTURES = sorted(set(MODELS) - {"resnet50", "convnext_tiny"})
SIZES = {name: 67 if name == "squeezenet1_1" else 64 for name in MODELS}


def _module(name: str, size: int) -> nn.Module:
    kwargs = dict(KWARGS.get(name, {}))
    if name == "efficientnet_lite0":
        kwargs["image_size"] = (size, size)
    torch.manual_seed(0)
    module, _ = resolve_model(name, model_kwargs=kwargs)
    return module


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _matching_module(module: nn.Module, x: np.ndarray, activations: np.ndarray) -> nn.Module:
    """The module, called once, whose output equals the explain model's ``activations``
    (the outermost such module: the one whose forward hook fires last)."""
    calls: dict[nn.Module, int] = {}
    found: list[nn.Module] = []

    def hook(m, _inputs, out):
        calls[m] = calls.get(m, 0) + 1
        if isinstance(out, torch.Tensor) and tuple(out.shape) == activations.shape:
            ref = out.detach().numpy()
            if np.abs(ref - activations).max() <= 1e-4 * max(1.0, np.abs(ref).max()):
                found.append(m)

    hooks = [m.register_forward_hook(hook) for m in module.modules() if m is not module]
    try:
        with torch.no_grad():
            module(torch.from_numpy(x.copy()))
    finally:
        for h in hooks:
            h.remove()
    once = [m for m in found if calls[m] == 1]
    assert once, "no torch module's output equals the chosen layer's activations"
    return once[-1]


# ONNX Runtime fuses the erf-GELU that the TorchScript exporter writes out (Div, Erf, Add,
# Mul, Mul) into one BiasGelu kernel; the gradient reads the intermediate values, so in the
# explain model the same arithmetic runs unfused and rounds differently (~1e-6 of the logits).
_UNFUSED_GELU = {"convnext_nano (torchscript)"}


def _declared_size(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """``model`` with its image height/width declared as ``size`` (nothing else changed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d in (dims[2], dims[3]):
        d.ClearField("dim_param")
        d.dim_value = size
    return model


def _check_against_autograd(plain: onnx.ModelProto, explain: onnx.ModelProto, module: nn.Module, size: int,
                            what: str, *, batch: int = 2, seed: int = 0) -> None:
    """The model's own outputs unchanged (for a dynamic-size model: against the original run
    with the size declared, as ONNX Runtime optimises it then), the layer has a spatial extent,
    the score is the logit, and the gradients are autograd's."""
    target = np.array([-1, 3][:batch])
    x = _well_conditioned_inputs(explain, module, batch, size, target, seed=seed)
    out = run_explain(explain, x, target)
    image = plain.graph.input[0].name
    own = _run(_declared_size(plain, size), {image: x})
    for i, o in enumerate(plain.graph.output):  # the model's own outputs, bit for bit
        if what in _UNFUSED_GELU:
            np.testing.assert_allclose(out[o.name], own[i], rtol=0, atol=1e-5 * np.abs(own[i]).max())
        else:
            np.testing.assert_array_equal(out[o.name], own[i], err_msg=f"{what}: output {o.name!r} changed")
    a = out[contract.ACTIVATIONS]
    assert a.shape[2] * a.shape[3] > 1, f"{what}: target layer without spatial extent {a.shape}"
    if isinstance(module, WithSoftmax):  # the score is the logit, before the Softmax
        module = module.module
    layer = _matching_module(module, x, a)
    path = next(n for n, m in module.named_modules() if m is layer)
    module64 = copy.deepcopy(module).double()
    layer64 = dict(module64.named_modules())[path]
    logits64, _, da, dx, chosen = autograd(module64, layer64, torch.from_numpy(x.astype(np.float64)), target)
    _, _, da32, dx32, _ = autograd(module, layer, torch.from_numpy(x), target)
    np.testing.assert_array_equal(out[contract.TARGET_CLASS], chosen)
    np.testing.assert_allclose(out[contract.SCORE], logits64[np.arange(batch), chosen], rtol=1e-4, atol=1e-4,
                               err_msg=f"{what}: score is not the logit")
    _assert_exact(out[contract.GRAD_ACTIVATIONS], da, da32, f"{what} grad_activations ({path})")
    _assert_exact(out[contract.GRAD_INPUT], dx, dx32, f"{what} grad_input")


def _augment(plain: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallTargetLayerWarning)  # 64 px inputs: 2x2 last stages
        return augment_model(plain, input_gradients=True, **kwargs)


# ---------------------------------------------------------------------------------------
# every architecture, both torch exporters, no flags
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_from_both_exporters(name, exporter):
    size = SIZES[name]
    module = _module(name, size)
    plain = torchscript(module, size) if exporter == "torchscript" else dynamo(module, size)
    _check_against_autograd(plain, _augment(plain), module, size, f"{name} ({exporter})")


@pytest.mark.parametrize("idiom", sorted(TIMM_IDIOMS))
def test_timm_export_idioms(idiom):
    """Sizes computed at run time from a dynamic batch or with float arithmetic (timm's
    TF "same" padding, split attention, ECA, a ViT class token, selective kernels)."""
    torch.manual_seed(0)
    module = TIMM_IDIOMS[idiom]().eval()
    plain = torchscript(module, 64)
    explain = _augment(plain)
    _check_against_autograd(plain, explain, module, 64, idiom)
    # the file's forward is the original's, node for node: ONNX Runtime optimises it alike
    assert list(explain.graph.node)[: len(plain.graph.node)] == list(plain.graph.node)


# ---------------------------------------------------------------------------------------
# dynamic height/width, old opsets, paddle2onnx habits, onnxslim
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_dynamic_height_width_is_fixed_from_the_size(name):
    size = 64
    module = _module(name, size)
    plain = torchscript(module, size, dynamic_hw=True)
    dims = plain.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param
    with pytest.raises(ModelError, match=r"dynamic height/width.*--size"):
        augment_model(plain)
    _, layers, _ = inspect_layers(plain, size=(size, size))
    assert layers and all(c.height is not None for c in layers)
    explain = _augment(plain, preprocess=contract.Preprocess(size=(size, size)))
    shape = [d.dim_value for d in explain.graph.input[0].type.tensor_type.shape.dim]
    assert shape[1:] == [3, size, size]
    _check_against_autograd(plain, explain, module, size, f"{name} (dynamic H/W)")


def test_a_size_contradicting_the_fixed_input_is_refused():
    plain = torchscript(_module("resnet18", 64), 64)
    with pytest.raises(ModelError, match=r"--size 96x96 contradicts the fixed shape \[.*\] of the image input 'input'"):
        augment_model(plain, preprocess=contract.Preprocess(size=(96, 96)))


@pytest.mark.parametrize(("name", "opset"), [("squeezenet1_1", 7), ("resnet18", 9), ("resnet18", 11),
                                             ("mobilenet_v3_small", 9), ("efficientnet_lite0", 11)])
def test_old_opsets_ending_in_softmax(name, opset):
    """Upgraded internally; the Softmax that ONNX's converter wraps in Flatten/Reshape is
    still found, so the score is the logit and the output role says probabilities."""
    size = SIZES[name]
    module = _module(name, size)
    plain = torchscript(WithSoftmax(module), size, opset=opset)
    assert plain.opset_import[0].version == opset
    explain = _augment(plain)
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in explain.metadata_props})
    assert meta.score == "logit" and meta.outputs.get("probabilities") == "output"
    _check_against_autograd(plain, explain, WithSoftmax(module), size, f"{name} (opset {opset})")


def test_paddle_style_file():
    """Weights in Constant nodes, a Reshape target computed from Shape(x), dynamic H/W, opset 11."""
    size = 48
    module = PaddleStyle().eval()
    plain = weights_in_constants(torchscript(module, size, opset=11, dynamic_hw=True))
    assert not plain.graph.initializer and any(n.op_type == "Shape" for n in plain.graph.node)
    explain = _augment(plain, preprocess=contract.Preprocess(size=(size, size)))
    _check_against_autograd(plain, explain, module, size, "paddle-style")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_onnxslim_output(name):
    pytest.importorskip("onnxslim")
    size = 64
    module = _module(name, size)
    plain = slimmed(torchscript(module, size))
    _check_against_autograd(plain, _augment(plain), module, size, f"{name} (onnxslim)")


# ---------------------------------------------------------------------------------------
# channels-last, tf2onnx style
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("pooling", ["gap", "reduce_mean"])
def test_channels_last_keras_style(pooling, opset):
    net = KerasStyle(pooling=pooling, opset=opset)
    plain = net.onnx()
    explain = augment_model(plain, input_gradients=True)
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in explain.metadata_props})
    assert meta.target_layer in net.layers, f"{meta.target_layer}: the pooled N x 1 x 1 x C tensor is no map"
    assert meta.preprocess.layout == "NHWC"
    rng = np.random.default_rng(opset)
    x = rng.standard_normal((3, net.size, net.size, 3)).astype(np.float32)
    target = np.array([-1, 2, 4])
    out = run_explain(explain, x, target)
    np.testing.assert_array_equal(out["probabilities"], _run(plain, {"image": x})[0])
    chosen, a, da, dx = net.reference(x, target)
    np.testing.assert_array_equal(out[contract.TARGET_CLASS], chosen)
    np.testing.assert_allclose(out[contract.ACTIVATIONS], a, rtol=1e-5, atol=1e-5)  # channels-first, as contracted
    _assert_exact(out[contract.GRAD_ACTIVATIONS], da, da, "keras-style grad_activations")
    _assert_exact(out[contract.GRAD_INPUT], dx, dx, "keras-style grad_input")


@pytest.mark.parametrize("pooling", ["gap", "reduce_mean"])
def test_channels_last_target_layer_gets_the_in_graph_maps(pooling):
    """A channels-last target layer (what tf2onnx leaves where its transpose optimiser gives
    up) still gets the command line's default outputs, in-graph maps included: each the
    Grad-CAM / Grad-CAM++ / LayerCAM of the float64 reference's activations and gradients."""
    from onnx_explain.methods import create, normalize01
    from onnx_explain.preprocess import Geometry

    net = KerasStyle(pooling=pooling)
    maps = {"gradcam": "gradcam", "gradcam_plusplus": "gradcam++", "layercam": "layercam"}
    explain = augment_model(net.onnx(), outputs=[contract.TARGET_CLASS, contract.ACTIVATIONS,
                                                 contract.GRAD_ACTIVATIONS, *maps])
    x = np.random.default_rng(5).standard_normal((3, net.size, net.size, 3)).astype(np.float32)
    target = np.array([-1, 1, 3])
    out = run_explain(explain, x, target)
    chosen, a, da, _ = net.reference(x, target)
    np.testing.assert_array_equal(out[contract.TARGET_CLASS], chosen)

    class Reference:  # the float64 reference's activations and gradients, as the methods read them
        output_names = [contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS]

        def __call__(self, *_args, **_kwargs):
            return {contract.TARGET_CLASS: chosen, contract.SCORE: np.zeros(len(chosen)),  # the maps do not read it
                    contract.ACTIVATIONS: a, contract.GRAD_ACTIVATIONS: da}

    h = w = net.size
    geometry = Geometry((h, w), (h, w), (h, w), (0, 0))
    for output, method in maps.items():
        result = create(method, Reference()).attribute(x, target)
        for i, raw in enumerate(normalize01(result.maps)):
            diff = float(np.abs(out[output][i] - geometry.to_original(raw)).max())
            assert diff <= 1e-4, f"{output}[{i}]: {diff}"


def test_inspect_says_why_values_are_not_candidates():
    net = KerasStyle(pooling="reduce_mean")
    clf, layers, chosen = inspect_layers(net.onnx())
    assert clf.layout == "NHWC" and chosen.value.name in net.layers
    by_name = {c.value.name: c for c in layers}
    assert by_name["pooled"].reason.startswith("no spatial extent")
    assert by_name["block2_out"].layout == "NHWC" and (by_name["block2_out"].height, by_name["block2_out"].channels) == (10, 12)
    assert by_name["r2"].usable and by_name["r2"].layout == "NCHW"


def test_unknown_size_is_named_as_the_reason():
    """A map whose size is only known at run time (Resize to a size fed as an input)."""
    n = onnx.helper.make_node
    nodes = [n("Resize", ["image", "", "", "sizes"], ["big"], mode="nearest"),
             n("Conv", ["big", "w"], ["c"]), n("Relu", ["c"], ["r"]),
             n("GlobalAveragePool", ["r"], ["p"]), n("Flatten", ["p"], ["f"]), n("MatMul", ["f", "fc"], ["y"])]
    graph = onnx.helper.make_graph(
        nodes, "g",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 8, 8]),
         onnx.helper.make_tensor_value_info("sizes", onnx.TensorProto.INT64, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
         onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "fc")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    _, layers, chosen = inspect_layers(model)
    assert chosen is None
    assert {c.value.name: c.reason for c in layers}["r"].startswith("unknown size")
    with pytest.raises(ModelError, match="unknown size"):
        augment_model(model)


def test_small_target_layer_is_warned_about():
    plain = torchscript(_module("resnet18", 64), 64)
    with pytest.warns(SmallTargetLayerWarning, match="2x2 map"):
        augment_model(plain)


# ---------------------------------------------------------------------------------------
# the command line on foreign files
# ---------------------------------------------------------------------------------------


def test_cli_dynamic_size_needs_size_and_warns_on_small_maps(tmp_path):
    from click.testing import CliRunner

    from onnx_explain.command.cli import main

    src = tmp_path / "dynamic.onnx"
    onnx.save(torchscript(_module("resnet18", 64), 64, dynamic_hw=True), src)
    runner = CliRunner()
    res = runner.invoke(main, ["augment", str(src), "-o", str(tmp_path / "a.onnx")])
    assert res.exit_code == 2 and "dynamic height/width" in res.output and "--size" in res.output
    assert res.output.startswith(f"error: {src}: ")  # the file is named
    assert not (tmp_path / "a.onnx").exists()
    res = runner.invoke(main, ["augment", str(src), "--mean", "0.5,0.5,0.5", "-o", str(tmp_path / "a.onnx")])
    assert res.exit_code == 2 and "--size" in res.output, res.output  # never a silent 224
    res = runner.invoke(main, ["augment", str(src), "--size", "64x64", "-o", str(tmp_path / "a.onnx")])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "2x2 map" in res.output
    res = runner.invoke(main, ["inspect", str(src)])
    assert res.exit_code == 2 and res.output.startswith(f"error: {src}: ") and "--size" in res.output
    res = runner.invoke(main, ["inspect", str(src), "--size", "64"])
    assert res.exit_code == 0 and f"augment {src} -o explain.onnx --size 64" in res.output, res.output
    res = runner.invoke(main, ["inspect", str(src), "--size", "64", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["input_size"] == [64, 64] and info["default_layer"]
    assert any(c["reason"].startswith("no spatial extent") for c in info["not_usable"])


@pytest.mark.parametrize("fill", [0.0, 1.5])
def test_zero_pad_before_conv_becomes_the_convs_pads(fill):
    """TorchScript's TF-style "same" padding: an explicit Pad feeding a Conv. For the analysis a
    zero pad is folded into the Conv (its gradient then needs no slicing); any other fill value
    is left alone."""
    from onnx_explain.ir_utils import load_for_rewriting

    rng = np.random.default_rng(1)
    n = onnx.helper.make_node
    nodes = [n("Pad", ["image", "pads", "fill"], ["padded"], mode="constant"),
             n("Conv", ["padded", "w"], ["c"], strides=[2, 2], pads=[1, 0, 0, 1]),
             n("Relu", ["c"], ["r"]), n("GlobalAveragePool", ["r"], ["p"]), n("Flatten", ["p"], ["f"]),
             n("MatMul", ["f", "fc"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 2, 1], np.int64), "pads"),
             onnx.numpy_helper.from_array(np.array(fill, np.float32), "fill"),
             onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc")]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 15, 15])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    analysed = load_for_rewriting(model).graph
    assert ("Pad" in [node.op_type for node in analysed]) == (fill != 0.0)
    conv = next(node for node in analysed if node.op_type == "Conv")
    assert list(conv.attributes["pads"].value) == ([1, 1, 2, 2] if fill == 0.0 else [1, 0, 0, 1])  # begins, ends
    explain = augment_model(model, input_gradients=True)
    x = rng.standard_normal((2, 3, 15, 15)).astype(np.float32)
    out = run_explain(explain, x, np.array([-1, 2]))
    np.testing.assert_array_equal(out["y"], _run(model, {"image": x})[0])
    # the gradient is built on the folded pair; the file keeps the original forward
    assert list(explain.graph.node)[: len(model.graph.node)] == list(model.graph.node)
    # the input gradient through the folded pair, against central differences of the logit
    eps, i = 1e-2, (0, 1, 7, 4)
    plus, minus = x.copy(), x.copy()
    plus[i] += eps
    minus[i] -= eps
    logit = int(out[contract.TARGET_CLASS][0])
    fd = (_run(model, {"image": plus})[0][0, logit] - _run(model, {"image": minus})[0][0, logit]) / (2 * eps)
    assert abs(out[contract.GRAD_INPUT][i] - fd) <= 1e-2 * max(1.0, abs(fd))


def test_inspect_always_lists_the_default_layer(tmp_path):
    """Fourteen bypassed branch maps after the default layer: the default still gets its '*'
    line in the text listing (which shows the last dozen), and the rest are counted."""
    from click.testing import CliRunner

    from onnx_explain.command.cli import main

    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.branches = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(14))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            x = self.act(self.stem(x))
            return self.fc(sum(b(x) for b in self.branches).mean((2, 3)))

    torch.manual_seed(0)
    src = tmp_path / "branches.onnx"
    onnx.save(torchscript(Branches(), 16), src)
    res = CliRunner().invoke(main, ["inspect", str(src)])
    assert res.exit_code == 0, res.output
    default = json.loads(CliRunner().invoke(main, ["inspect", str(src), "--json"]).output)["default_layer"]
    starred = [line for line in res.output.splitlines() if line.strip().startswith("*")]
    assert len(starred) == 1 and default in starred[0], res.output
    assert "earlier candidates not shown; --json lists all" in res.output
