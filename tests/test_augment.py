"""The augmenter on hand-made models: contract, the design's known traps, odd inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from onnx_explain import contract
from onnx_explain.augment import augment_model, inspect_layers
from onnx_explain.errors import ModelError, UnsupportedOperatorError
from torch_reference import assert_close, autograd, export, run_explain


class SmallNet(nn.Module):
    """Conv/BN/ReLU/MaxPool/depthwise/residual/GAP/Linear: a bit of everything."""

    def __init__(self, classes: int = 7, zero_pad: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        pad = [nn.ZeroPad2d((0, 1, 0, 1))] if zero_pad else []  # "same" padding as EfficientNet
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.dw = nn.Sequential(*pad, nn.Conv2d(8, 8, 3, stride=2, padding=0 if zero_pad else 1, groups=8),
                                nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.pw(self.dw(self.stem(x)))
        self.layer = torch.relu(x + self.res(x))
        return self.fc(self.layer.mean((2, 3)))


class LayerOut(nn.Module):
    """Hook target for SmallNet's last activation."""


def _reference(model, x, target):
    x_t = torch.as_tensor(x).requires_grad_(True)
    logits = model(x_t)
    a = model.layer
    a.retain_grad()
    t = torch.as_tensor(target)
    chosen = torch.where(t < 0, logits.argmax(1), t)
    logits.gather(1, chosen[:, None]).sum().backward()
    return a.detach().numpy(), a.grad.numpy(), x_t.grad.numpy(), chosen.numpy()


@pytest.fixture(scope="module")
def small():
    model = SmallNet().eval()
    x = torch.randn(2, 3, 32, 32)
    return model, export(model, x)


def _check_against_torch(model, proto, batch, seed=0, size=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    target = rng.integers(-1, 7, size=batch)
    out = run_explain(proto, x, target)
    a, da, dx, chosen = _reference(model, x, target)
    np.testing.assert_array_equal(out[contract.TARGET_CLASS], chosen)
    assert_close(out[contract.ACTIVATIONS], a, "activations")
    assert_close(out[contract.GRAD_ACTIVATIONS], da, "grad_activations")
    assert_close(out[contract.GRAD_INPUT], dx, "grad_input")
    return out


def test_contract_outputs_and_metadata(small):
    model, plain = small
    proto = augment_model(plain, input_gradients=True, guided=True, gradcam=True)
    names = [o.name for o in proto.graph.output]
    assert names == ["logits", "target_class", "score", "activations", "grad_activations", "grad_input",
                     "guided_grad_input", "gradcam"]
    assert [i.name for i in proto.graph.input] == ["input", "target"]
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.score == "logit" and meta.version == contract.FORMAT_VERSION
    assert meta.outputs["grad_activations"] == "grad_activations"
    assert meta.preprocess.size == (32, 32)
    cam = json.loads({p.key: p.value for p in proto.metadata_props}["onnx_explain.cam"])
    assert cam["transposed"] is True


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_gradients_match_autograd_at_any_batch(small, batch):
    # exported with batch 2: other batch sizes must work (dynamic batch, no baked shapes)
    model, plain = small
    proto = augment_model(plain, input_gradients=True)
    out = _check_against_torch(model, proto, batch, seed=batch)
    logits = out["logits"]
    np.testing.assert_allclose(out[contract.SCORE], logits[np.arange(batch), out[contract.TARGET_CLASS]], rtol=1e-6)


def test_asymmetric_pads_as_dynamo_writes_them():
    model = SmallNet(zero_pad=True).eval()
    proto_plain = export(model, torch.randn(1, 3, 32, 32))
    pads = [list(a.ints) for n in proto_plain.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads"]
    assert any(p[:2] != p[2:] for p in pads), f"expected an asymmetric Conv pad, got {pads}"
    _check_against_torch(model, augment_model(proto_plain, input_gradients=True), 3)


def test_batchnorm_kept_in_graph():
    model = SmallNet().eval()
    plain = export(model, torch.randn(1, 3, 32, 32), dynamo=False, keep_batchnorm=True)
    assert any(n.op_type == "BatchNormalization" for n in plain.graph.node)
    _check_against_torch(model, augment_model(plain, input_gradients=True), 2)


def test_fixed_batch_model():
    model = SmallNet().eval()
    plain = export(model, torch.randn(1, 3, 32, 32), dynamic_batch=False)
    assert plain.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    _check_against_torch(model, augment_model(plain, input_gradients=True), 1)


def test_only_the_needed_path_is_emitted(small):
    """Without input gradients nothing below the target layer gets a backward node, and a
    dead branch of the forward graph is pruned."""
    _, plain = small
    dead = onnx.helper.make_node("Relu", ["input"], ["dead_branch"], name="dead")
    plain = onnx.ModelProto.FromString(plain.SerializeToString())
    plain.graph.node.append(dead)
    proto = augment_model(plain)
    assert not any(n.name == "dead" for n in proto.graph.node)
    grad_ops = [n.op_type for n in proto.graph.node if n.name.startswith("grad/")]
    assert "ConvTranspose" not in grad_ops and "ScatterElements" not in grad_ops, grad_ops
    with_input = augment_model(plain, input_gradients=True)
    assert len(with_input.graph.node) > len(proto.graph.node)


def test_file_size_is_about_the_plain_size(small):
    _, plain = small
    full = augment_model(plain, input_gradients=True, guided=True, gradcam=True)
    weights = sum(len(i.raw_data) for i in plain.graph.initializer)
    added = sum(len(i.raw_data) + 8 * len(i.int64_data) for i in full.graph.initializer) - weights
    assert added < 4096, f"the explain model added {added} bytes of constants"


def test_guided_backprop_matches_guided_relu_hook():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU())
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.f(x).mean((2, 3)))

    model = Plain().eval()
    x = torch.randn(3, 3, 24, 24)
    proto = augment_model(export(model, x), guided=True)
    target = np.array([-1, 2, 4])
    out = run_explain(proto, x.numpy(), target)
    _, _, _, gx, _ = autograd(model, model.f[4], x, target, guided=True)
    assert_close(out[contract.GUIDED_GRAD_INPUT], gx, "guided_grad_input")


def test_gradcam_output_equals_formula(small):
    model, plain = small
    proto = augment_model(plain, gradcam=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = run_explain(proto, x, np.array([-1, 4]))
    a, da = out[contract.ACTIVATIONS], out[contract.GRAD_ACTIVATIONS]
    cam = np.maximum((da.mean(axis=(2, 3))[:, :, None, None] * a).sum(1), 0)
    import cv2

    for i in range(2):  # normalised at the map's resolution, then resized (the Python runtime's order)
        norm = (cam[i] - cam[i].min()) / max(cam[i].max() - cam[i].min(), 1e-12)
        up = cv2.resize(norm, (32, 32), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(out[contract.GRADCAM][i], up, atol=1e-5)


def test_gap_linear_head_gradcam_is_cam(small):
    """For a GAP + linear head, dY/dA = W[c] / (h*w) exactly (a free cross-check)."""
    model, plain = small
    out = run_explain(augment_model(plain), np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32),
                      np.array([1, 6]))
    da = out[contract.GRAD_ACTIVATIONS]
    h, w = da.shape[2:]
    expected = model.fc.weight.detach().numpy()[[1, 6]][:, :, None, None] / (h * w)
    np.testing.assert_allclose(da, np.broadcast_to(expected, da.shape), rtol=1e-5, atol=1e-8)


def test_nhwc_model_ending_in_softmax():
    class NHWC(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(6, 12, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(12, 4)

        def forward(self, x):  # x: N x H x W x C
            f = self.body(x.permute(0, 3, 1, 2))
            return torch.softmax(self.fc(f.mean((2, 3))), dim=1)

    model = NHWC().eval()
    x = torch.randn(2, 20, 20, 3)
    plain = export(model, x)
    proto = augment_model(plain, input_gradients=True)
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.preprocess.layout == "NHWC" and "probabilities" in meta.outputs
    target = np.array([-1, 3])
    out = run_explain(proto, x.numpy(), target)
    # the differentiated score is the logit before the softmax
    logits_model = nn.Sequential()  # noqa: F841
    xt = x.clone().requires_grad_(True)
    feats = model.body(xt.permute(0, 3, 1, 2))
    feats.retain_grad()
    logits = model.fc(feats.mean((2, 3)))
    chosen = torch.where(torch.as_tensor(target) < 0, logits.argmax(1), torch.as_tensor(target))
    logits.gather(1, chosen[:, None]).sum().backward()
    np.testing.assert_allclose(out[contract.SCORE], logits.gather(1, chosen[:, None])[:, 0].detach().numpy(), rtol=1e-5)
    assert out[contract.GRAD_INPUT].shape == (2, 20, 20, 3)
    assert_close(out[contract.GRAD_INPUT], xt.grad.numpy(), "grad_input (NHWC)")
    assert_close(out[contract.GRAD_ACTIVATIONS], feats.grad.numpy(), "grad_activations")


@pytest.mark.parametrize("opset", [13, 15, 17, 19, 21])
def test_opsets_13_to_21(opset):
    """A model written by the legacy exporter at each opset (not our exporter's settings)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(opset)
            self.f = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                                   nn.Conv2d(6, 6, 3, padding=1), nn.Hardswish())
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.f(x), 1), 1)), 1)

    model = Net().eval()
    x = torch.randn(2, 3, 17, 17)
    if opset <= 20:
        plain = export(model, x, dynamo=False, opset=opset)
    else:
        plain = onnx.version_converter.convert_version(export(model, x, dynamo=False, opset=20), opset)
    assert plain.opset_import[0].version == opset
    proto = augment_model(plain, input_gradients=True, gradcam=True)
    target = np.array([-1, 1])
    out = run_explain(proto, x.numpy(), target)
    xt = x.clone().requires_grad_(True)
    logits = model.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(model.f(xt), 1), 1))
    chosen = torch.where(torch.as_tensor(target) < 0, logits.argmax(1), torch.as_tensor(target))
    logits.gather(1, chosen[:, None]).sum().backward()
    assert_close(out[contract.GRAD_INPUT], xt.grad.numpy(), f"grad_input opset {opset}")


def test_opset_outside_the_convertible_range_is_refused(small):
    """Opsets 7-12 are upgraded (tests/test_foreign_exports.py); older or newer ones are
    refused by number, with no advice to run a conversion."""
    _, plain = small
    for version, words in ((5, "older than 7"), (99, "newer than")):
        old = onnx.ModelProto.FromString(plain.SerializeToString())
        old.opset_import[0].version = version
        with pytest.raises(ModelError, match=f"opset {version} is {words}") as info:
            augment_model(old)
        assert "convert_version" not in str(info.value)


def test_unsupported_operator_on_path_is_named():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    fc = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "fc")
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Cos", ["c"], ["weird"], name="my_cos"),
        onnx.helper.make_node("GlobalAveragePool", ["weird"], ["p"]),
        onnx.helper.make_node("Flatten", ["p"], ["f"]),
        onnx.helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y], [w, fc]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperatorError, match="'Cos'.*'my_cos'"):
        augment_model(model, layer="c")
    # the same op below the target layer is fine when input gradients are not asked for
    augment_model(model, layer="weird")


def test_inspect_lists_candidates_and_default(small):
    _, plain = small
    clf, candidates, chosen = inspect_layers(plain)
    assert clf.num_classes == 7 and not clf.ends_in_softmax
    assert chosen.value.name == candidates[-1].value.name
    assert chosen.channels == 16 and (chosen.height, chosen.width) == (8, 8)
    bypassed = [c for c in candidates if not c.dominates]
    assert bypassed, "the residual block's inner values are bypassed by the skip path"


def test_named_layer_and_bad_name(small):
    _, plain = small
    _, candidates, _ = inspect_layers(plain)
    early = candidates[1].value.name
    proto = augment_model(plain, layer=early)
    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.target_layer == early
    with pytest.raises(ModelError, match="no value named"):
        augment_model(plain, layer="does_not_exist")


def test_already_augmented_is_refused(small):
    _, plain = small
    with pytest.raises(ModelError, match="already an explain model"):
        augment_model(augment_model(plain))


@pytest.mark.parametrize("head", ["gemm_transB", "gemm_alpha", "matmul_add"])
def test_class_score_gradient_is_a_weight_row_lookup(head):
    """The one-hot seed times the classifier weights is emitted as a Gather of the target
    classes' rows, exactly d score / dA = alpha * W[c] / (h * w) for a GAP + linear head."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    k, classes, hw = 6, 4, 5
    conv_w = rng.standard_normal((k, 3, 3, 3)).astype(np.float32)
    w = rng.standard_normal((classes, k)).astype(np.float32)  # class x feature
    alpha = 0.5 if head == "gemm_alpha" else 1.0
    nodes = [helper.make_node("Conv", ["input", "cw"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
    inits = [numpy_helper.from_array(conv_w, "cw")]
    if head == "matmul_add":
        nodes += [helper.make_node("MatMul", ["f", "wt"], ["m"]), helper.make_node("Add", ["m", "bias"], ["logits"])]
        inits += [numpy_helper.from_array(w.T.copy(), "wt"), numpy_helper.from_array(np.ones(classes, np.float32), "bias")]
    elif head == "gemm_transB":
        nodes.append(helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1))
        inits.append(numpy_helper.from_array(w, "w"))
    else:  # B stored feature x class, scaled
        nodes.append(helper.make_node("Gemm", ["f", "wt"], ["logits"], alpha=alpha))
        inits.append(numpy_helper.from_array(w.T.copy(), "wt"))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, hw, hw])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    proto = augment_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    grad_ops = [n.op_type for n in proto.graph.node if n.name.startswith("grad/")]
    assert "Gather" in grad_ops and "Gemm" not in grad_ops and "MatMul" not in grad_ops, grad_ops

    x = rng.standard_normal((3, 3, hw, hw)).astype(np.float32)
    target = np.array([2, -1, 0], dtype=np.int64)
    out = run_explain(proto, x, target, [contract.TARGET_CLASS, contract.GRAD_ACTIVATIONS])
    cls = out[contract.TARGET_CLASS]
    expected = np.broadcast_to((alpha * w[cls] / hw**2)[:, :, None, None], (3, k, hw, hw))
    np.testing.assert_allclose(out[contract.GRAD_ACTIVATIONS], expected, rtol=1e-6, atol=1e-7)
    assert cls[0] == 2 and cls[2] == 0
