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


def _explain(channels: int, seed: int = 0) -> onnx.ModelProto:
    """ReLU6 stem, depthwise 3x3 + ReLU, a residual 1x1 block, strided 1x1 + ReLU, GAP +
    linear head."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = {
        "w0": rng.standard_normal((c, 3, 3, 3)) * 0.5, "b0": rng.standard_normal(c),
        "w1": rng.standard_normal((c, 1, 3, 3)) * 0.5, "w2": rng.standard_normal((c, c, 1, 1)) * 0.3,
        "w3": rng.standard_normal((c, c, 1, 1)) * 0.3,
        "fc": rng.standard_normal((7, c)), "lo": np.array(0.0), "hi": np.array(6.0),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["a0"]),
        helper.make_node("Conv", ["a0", "w1"], ["c1"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w3"], ["c3"]),
        helper.make_node("Add", ["c3", "a1"], ["r3"]),
        helper.make_node("Relu", ["r3"], ["a3"]),
        helper.make_node("Conv", ["a3", "w2"], ["c2"], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "masks", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 20, 20])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return augment_model(plain, layer="a2", input_gradients=True, guided=True)


def _net(channels: int) -> onnx.ModelProto:
    return prune(_explain(channels), ["input", contract.TARGET], OUTPUTS)


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
