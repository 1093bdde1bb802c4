"""Masks kept in ONNX Runtime's NCHWc layout: fewer reorders, the same numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_explain import contract
from onnx_explain.augment import augment_model
from onnx_explain.nchwc_masks import (
    NCHWC_DOMAIN,
    blocked_mask_session,
    channel_first_shapes,
    keep_masks_blocked,
    ort_optimized_graph,
)
from onnx_explain.pruning import prune
from onnx_explain.session import ExplainSession

OUTPUTS = [contract.GRAD_INPUT, contract.GUIDED_GRAD_INPUT, contract.GRAD_ACTIVATIONS, "logits"]


def _explain(channels: int, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """ReLU6 stem, depthwise 3x3 + ReLU, a residual 1x1 block, a 1x1 + HardSwish block with a
    squeeze-excitation gate (mean, two 1x1, HardSigmoid, product), strided 1x1 + ReLU, GAP +
    linear head."""
    rng = np.random.default_rng(seed)
    c, s = channels, channels // 2
    inits = {
        "w0": rng.standard_normal((c, 3, 3, 3)) * 0.5, "b0": rng.standard_normal(c),
        "w1": rng.standard_normal((c, 1, 3, 3)) * 0.5, "w2": rng.standard_normal((c, c, 1, 1)) * 0.3,
        "w3": rng.standard_normal((c, c, 1, 1)) * 0.3, "w4": rng.standard_normal((c, c, 1, 1)) * 0.6,
        "e1": rng.standard_normal((s, c, 1, 1)) * 0.5, "f1": rng.standard_normal(s),
        "e2": rng.standard_normal((c, s, 1, 1)) * 0.5, "f2": rng.standard_normal(c) * 2,
        "fc": rng.standard_normal((7, c)), "lo": np.array(0.0), "hi": np.array(6.0),
    }
    if opset >= 18:
        mean = helper.make_node("ReduceMean", ["h4", "hw"], ["m4"], keepdims=1)
        axes = [numpy_helper.from_array(np.array([-1, -2], dtype=np.int64), "hw")]
    else:
        mean, axes = helper.make_node("ReduceMean", ["h4"], ["m4"], axes=[2, 3], keepdims=1), []
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1"], ["c1"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w3"], ["c3"]),
        helper.make_node("Add", ["c3", "a1"], ["r3"]),
        helper.make_node("Relu", ["r3"], ["a3"]),
        helper.make_node("Conv", ["a3", "w4"], ["c4"]),
        *([helper.make_node("HardSwish", ["c4"], ["h4"])] if opset >= 14 else [  # as exporters write it before 14
            helper.make_node("HardSigmoid", ["c4"], ["s4"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["c4", "s4"], ["h4"])]),
        mean,
        helper.make_node("Conv", ["m4", "e1", "f1"], ["q1"]),
        helper.make_node("Relu", ["q1"], ["q2"]),
        helper.make_node("Conv", ["q2", "e2", "f2"], ["q3"]),
        helper.make_node("HardSigmoid", ["q3"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h4", "gate"], ["a4"]),
        helper.make_node("Conv", ["a4", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "masks", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 20, 20])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()] + axes,
    )
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return augment_model(plain, layer="a2", input_gradients=True, guided=True)


def _net(channels: int, opset: int = 17) -> onnx.ModelProto:
    return prune(_explain(channels, opset=opset), ["input", contract.TARGET], OUTPUTS)


def _plain_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("channels", [32, 24])  # 24: the blocked layout pads channels
def test_same_numbers_fewer_reorders(tmp_path, channels):
    model = _net(channels)
    optimized = ort_optimized_graph(model, ["CPUExecutionProvider"], str(tmp_path))
    rewritten, moved = keep_masks_blocked(optimized, channel_first_shapes(model))

    def reorders(m):
        return sum(1 for n in m.graph.node if n.domain == NCHWC_DOMAIN and n.op_type.startswith("Reorder"))

    assert moved >= 8, moved  # the masks of four activations, plain and guided
    assert reorders(rewritten) < reorders(optimized)
    # the gradients meeting at the residual are summed by the convolution itself
    assert any(n.domain == NCHWC_DOMAIN and n.op_type == "Conv" and len(n.input) == 4 and n.output[0].endswith("/nchwc")
               for n in rewritten.graph.node)

    x = np.random.default_rng(1).standard_normal((3, 3, 20, 20)).astype(np.float32)
    feeds = {"input": x, contract.TARGET: np.array([2, -1, 6], dtype=np.int64)}
    session = blocked_mask_session(model, ort.SessionOptions(), ["CPUExecutionProvider"], str(tmp_path))
    assert session is not None
    for name, got, want in zip(OUTPUTS, session.run(OUTPUTS, feeds), _plain_session(model).run(OUTPUTS, feeds)):
        # a convolution accumulating onto the other gradient rounds in another order
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=name)
        assert np.abs(want).max() > 0, name


# 13: x * HardSigmoid(x), and a Reshape whose shape inference ignores the propagated Shape;
# 17 / 18: the mean's axes an attribute / an input
@pytest.mark.parametrize("opset", [13, 17, 18])
def test_hardswish_and_squeeze_excitation_stay_blocked(tmp_path, opset):
    """HardSwish's backward (Abs, HardSigmoid steps, Mul, Add) reads the blocked tensors; the
    gate's mean, product and their backward (sum, spreading) run on five-dimensional views of
    them; the same numbers (24 channels: the blocks' padding is in the views)."""
    model = _net(24, opset)
    optimized = ort_optimized_graph(model, ["CPUExecutionProvider"], str(tmp_path))
    rewritten, _ = keep_masks_blocked(optimized, channel_first_shapes(model))
    producer = {out: n for n in rewritten.graph.node for out in n.output}

    def after_reorder(node):
        return any(i in producer and producer[i].op_type == "ReorderOutput" for i in node.input)

    nodes = [n for n in rewritten.graph.node if n.domain == ""]
    reductions = [n for n in nodes if n.op_type in ("ReduceMean", "ReduceSum")]
    assert len(reductions) == 3 and all(n.input[0].endswith("/5d") for n in reductions)  # forward mean, two backward sums
    assert any(n.op_type == "Mul" and n.output[0] == "a4/nchwc5" for n in nodes)  # the gate's product
    assert not any(after_reorder(n) for n in nodes if n.op_type in ("Abs", "HardSigmoid", "ReduceMean", "ReduceSum", "Expand"))
    steps = [n for n in nodes if n.op_type == "Abs"]
    assert len(steps) == 2  # HardSwish's and the gate's; the guided pass shares them

    x = np.random.default_rng(3).standard_normal((2, 3, 20, 20)).astype(np.float32)
    feeds = {"input": x, contract.TARGET: np.array([4, -1], dtype=np.int64)}
    session = blocked_mask_session(model, ort.SessionOptions(), ["CPUExecutionProvider"], str(tmp_path))
    for name, got, want in zip(OUTPUTS, session.run(OUTPUTS, feeds), _plain_session(model).run(OUTPUTS, feeds)):
        # sums over H x W and the accumulating convolution add in another order
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=name)


def test_explain_session_uses_it_for_input_gradients_only(monkeypatch):
    """CPU runs that need the input gradient get the blocked masks; the numbers do not
    change; a failure there falls back to the plain session."""
    explain = _explain(32)
    model = prune(explain, ["input", contract.TARGET], [contract.GRAD_INPUT])
    calls = []
    import onnx_explain.nchwc_masks as nchwc_masks

    real = nchwc_masks.blocked_mask_session
    monkeypatch.setattr(nchwc_masks, "blocked_mask_session", lambda *a: calls.append(1) or real(*a))
    x = np.random.default_rng(2).standard_normal((2, 3, 20, 20)).astype(np.float32)
    target = np.array([-1, 3])
    session = ExplainSession(explain, device="cpu")
    got = session(x, target, [contract.GRAD_INPUT])[contract.GRAD_INPUT]
    assert calls == [1]
    session(x, target, [contract.GRAD_ACTIVATIONS])
    assert calls == [1]
    want = _plain_session(model).run([contract.GRAD_INPUT], {"input": x, contract.TARGET: target})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())

    def broken(*args):
        raise RuntimeError("no optimized graph")

    monkeypatch.setattr(nchwc_masks, "blocked_mask_session", broken)
    fallback = ExplainSession(explain, device="cpu")(x, target, [contract.GRAD_INPUT])[contract.GRAD_INPUT]
    np.testing.assert_array_equal(fallback, want)  # the plain session itself
