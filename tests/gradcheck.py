"""Check a model's emitted vector-Jacobian product against central finite differences.

Everything runs in float64 with ONNX's reference evaluator, so the comparison is exact up
to the finite-difference truncation error; ONNX Runtime (float32) is checked against the
same numbers separately where it supports the operators.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnx_explain.autodiff import add_vjp

OPSET = 18


def single_op_model(
    op_type: str,
    inputs: dict[str, np.ndarray],
    attrs: dict | None = None,
    consts: dict[str, np.ndarray] | None = None,
    input_order: Sequence[str] | None = None,
    num_outputs: int = 1,
    opset: int = OPSET,
    dtype=TensorProto.DOUBLE,
) -> onnx.ModelProto:
    """``y = op(*inputs)`` where ``inputs`` are graph inputs and ``consts`` initializers."""
    consts = consts or {}
    order = list(input_order or list(inputs) + list(consts))
    outs = [f"y{i}" for i in range(num_outputs)]
    node = helper.make_node(op_type, order, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, dtype, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, dtype, None) for o in outs],
        [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ReferenceEvaluator(model).run(None, feeds)


def check_vjp(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    wrt: Sequence[str],
    outputs: Sequence[str] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Assert d sum(r * y) / d x from the emitted graph equals central differences."""
    rng = rng or np.random.default_rng(0)
    outputs = list(outputs or [o.name for o in model.graph.output])
    ys = run(model, feeds)
    by_name = dict(zip([o.name for o in model.graph.output], ys))
    seeds = {f"grad_{o}": rng.standard_normal(by_name[o].shape) for o in outputs}
    vjp = add_vjp(model, outputs, wrt)
    onnx.checker.check_model(vjp)
    got = dict(zip([o.name for o in vjp.graph.output], run(vjp, {**feeds, **seeds})))

    def objective(f: dict[str, np.ndarray]) -> float:
        out = dict(zip([o.name for o in model.graph.output], run(model, f)))
        return float(sum(np.sum(seeds[f"grad_{o}"] * out[o]) for o in outputs))

    results = {}
    for name in wrt:
        x = feeds[name]
        numeric = central_differences(objective, feeds, name, eps)
        analytic = got[f"grad_{name}"]
        assert analytic.shape == x.shape, (analytic.shape, x.shape)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol + 1e-6 * np.abs(numeric).max())
        results[name] = analytic
    return results


def central_differences(objective, feeds: dict[str, np.ndarray], name: str, eps: float) -> np.ndarray:
    """d objective / d feeds[name], element by element, by central differences."""
    x = feeds[name]
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (objective({**feeds, name: plus}) - objective({**feeds, name: minus})) / (2 * eps)
    return numeric
