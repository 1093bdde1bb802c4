"""HardSwish / HardSigmoid gradients equal torch autograd, boundaries included.

torch's convention (``hardswish_backward``, ``hardsigmoid_backward``): HardSwish's
derivative is 0 up to -3, x/3 + 1/2 strictly between -3 and 3, and 1 from 3 on;
HardSigmoid's is 1/6 strictly inside (-3, 3), else 0.  The emitted forms decide the piece
on the input with exact steps, so the values at -3 and 3 themselves, at the floats next to
them and at huge magnitudes match torch's piece; inside, they agree to float32 rounding.
Checked on ONNX Runtime CPU in float32 (what users run) and float64, for the operators
and for the ``x * HardSigmoid(x)`` form that exporters at opsets below 14 emit for
``hardswish``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_explain.autodiff import add_vjp

torch = pytest.importorskip("torch")

EDGES = [-3.0, 3.0, 0.0, -1.5, 1.5, 6.0, -6.0, 1e8, -1e8, 1e30, -1e30, 1e-30, -1e-30]
DTYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def _inputs(dtype) -> np.ndarray:
    """Random values around the bounds plus every bound, its neighbours and extremes."""
    edges = list(EDGES)
    for bound in (-3.0, 3.0):
        below, above = np.nextafter(dtype(bound), dtype(-np.inf)), np.nextafter(dtype(bound), dtype(np.inf))
        edges += [below, above, np.nextafter(below, dtype(-np.inf)), np.nextafter(above, dtype(np.inf))]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2 * 3 * 8 * 8) * 3).astype(dtype)
    x[: len(edges)] = np.asarray(edges, dtype)
    return x.reshape(2, 3, 8, 8)


def _onnx_grad(nodes, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    dt = DTYPES[x.dtype.type]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dt, list(x.shape))],
                              [helper.make_tensor_value_info("y", dt, list(x.shape))])
    model = add_vjp(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), ["y"], ["x"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = next(i.name for i in session.get_inputs() if i.name != "x")
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x, seed: dy})))["grad_x"]


def _torch_grad(fn, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(x).requires_grad_(True)
    return torch.autograd.grad(fn(xt), xt, torch.from_numpy(dy))[0].numpy()


HARDSWISH = [helper.make_node("HardSwish", ["x"], ["y"])]
HARDSIGMOID = [helper.make_node("HardSigmoid", ["x"], ["y"], alpha=1 / 6, beta=0.5)]
DECOMPOSED = [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["x", "h"], ["y"])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["HardSwish", "HardSigmoid", "x*HardSigmoid(x)"])
def test_same_gradient_as_torch(form, dtype):
    nodes, fn = {"HardSwish": (HARDSWISH, torch.nn.functional.hardswish),
                 "HardSigmoid": (HARDSIGMOID, torch.nn.functional.hardsigmoid),
                 "x*HardSigmoid(x)": (DECOMPOSED, torch.nn.functional.hardswish)}[form]
    x = _inputs(dtype)
    dy = np.random.default_rng(1).uniform(0.5, 2.0, x.shape).astype(dtype)  # no zero: every piece shows
    got, want = _onnx_grad(nodes, x, dy), _torch_grad(fn, x, dy)
    local_got, local_want = got / dy, want / dy
    # the same piece everywhere: outside (-3, 3) the very values (0, or HardSwish's 1) ...
    outside = np.abs(x) >= 3
    np.testing.assert_array_equal(local_got[outside], local_want[outside])
    # ... and inside, the value to float32 rounding (x/3 + 1/2 is computed as hardsigmoid(x) +
    # x/6; in float64 too, the operator's alpha is a float32 attribute)
    tol = 8 * np.finfo(np.float32).eps
    np.testing.assert_allclose(local_got, local_want, rtol=tol, atol=tol)
    n = len(EDGES)
    flat_x, flat_got = x.ravel()[:n], local_got.ravel()[:n]
    if form != "HardSigmoid":
        assert flat_got[flat_x == -3.0] == 0 and flat_got[flat_x == 3.0] == 1  # the bounds themselves
    else:
        assert flat_got[flat_x == -3.0] == 0 and flat_got[flat_x == 3.0] == 0


def test_hard_sigmoid_other_slopes():
    """ONNX's default (alpha 0.2) and a shifted one: 'alpha strictly inside' the open interval
    where 0 < alpha * x + beta < 1."""
    x = np.linspace(-6, 6, 241).reshape(1, 1, 1, 241).astype(np.float32)  # steps of 0.05: every bound is on it
    dy = np.ones_like(x)
    for alpha, beta in ((0.2, 0.5), (0.25, 0.25), (-0.5, 0.5)):
        got = _onnx_grad([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=alpha, beta=beta)], x, dy)
        lo, hi = sorted(((0 - beta) / alpha, (1 - beta) / alpha))
        inside = (x.astype(np.float64) > lo + 1e-6) & (x.astype(np.float64) < hi - 1e-6)
        np.testing.assert_allclose(got, np.where(inside, np.float32(alpha), 0), rtol=1e-6)
