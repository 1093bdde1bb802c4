"""Pruning to the requested outputs: dead nodes go, and so do unread optional outputs."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_explain import contract
from onnx_explain.augment import augment_model
from onnx_explain.pruning import prune


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _pool_net(rng) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch."""
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((5, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "pool_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"),
         numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _pool_outputs(model: onnx.ModelProto) -> list[int]:
    return [len(n.output) for n in model.graph.node if n.op_type == "MaxPool"]


def test_gradcam_run_keeps_maxpool_without_indices(rng):
    """The input gradient reads MaxPool's arg-max from a twin MaxPool in the gradient graph;
    the forward MaxPool never returns it (it would not run in ONNX Runtime's NCHWc layout),
    and Grad-CAM's inputs do not need the twin."""
    explain = augment_model(_pool_net(rng), input_gradients=True)
    assert _pool_outputs(explain) == [1, 2]
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    feeds = {"input": x, contract.TARGET: np.array([1, -1], dtype=np.int64)}
    cam_outputs = [contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS, "logits"]
    cam = prune(explain, ["input", contract.TARGET], cam_outputs)
    assert _pool_outputs(cam) == [1]
    full = prune(explain, ["input", contract.TARGET], cam_outputs + [contract.GRAD_INPUT])
    assert _pool_outputs(full) == [1, 2]
    for a, b in zip(_run(cam, feeds), _run(full, feeds)[:3]):
        np.testing.assert_array_equal(a, b)


def test_required_and_unknown_outputs_are_kept(rng):
    """Split's outputs are not optional, a custom operator's are unknown: both stay whole,
    even unread; only a trailing run of unread optional outputs goes."""
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=0, num_outputs=2),
        helper.make_node("MyOp", ["a"], ["m0", "m1"], domain="example.custom"),
        helper.make_node("Dropout", ["a"], ["d", "mask"]),
        helper.make_node("Identity", ["d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]), helper.make_tensor_value_info("m0", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("example.custom", 1)])
    pruned = prune(model, ["x"], ["y", "m0"])
    outputs = {n.op_type: list(n.output) for n in pruned.graph.node}
    assert outputs["Split"] == ["a", "b"]
    assert outputs["MyOp"] == ["m0", "m1"]
    assert outputs["Dropout"] == ["d"]
