"""Vector-Jacobian rules of the less common operators, against central differences.

Same method as ``test_rules.py`` (whose helpers this file uses): shapes and attributes are
drawn from a generator seeded by the test's name and seed, the emitted VJP runs in float64
with ONNX's reference evaluator and is compared with central finite differences, and the
float32 VJP in ONNX Runtime CPU is compared with that float64 result.  ONNX Runtime has no
float64 kernel for InstanceNormalization, LRN, Mean, Celu or GlobalMaxPool, so their
float64 truth is the reference evaluator only; where that is wrong (LRN, Mean, GlobalMaxPool
in onnx 1.23) a spec-following kernel replaces it, checked against ONNX Runtime's float32
forward.  Where ties make finite differences meaningless (Max, Min, ReduceMax, a product
with zeros), the expected gradient is written out in numpy.  Files with a dynamic batch run
their VJP on a second batch size too.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from gradcheck import check_vjp
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_rules import (  # noqa: F401  (rng is a fixture)
    DOUBLE,
    FLOAT,
    _away_from_zero,
    _broadcast_pair,
    _cast_floats,
    _session,
    _small_shape,
    check_ort_float32,
    fd_check_ort,
    graph_model,
    op_model,
    rng,
    vjp_values,
)

from onnx_explain.autodiff import add_vjp
from onnx_explain.errors import UnsupportedOperatorError
from onnx_explain.normalize.upgrade_opset import upgrade_opset

SMALL = 60  # elements per differentiated input: the reference evaluator is rebuilt per evaluation


def _another_batch(rng, x: np.ndarray) -> np.ndarray:
    """An input like ``x`` with one image more: the VJP of a dynamic-batch file must run on it."""
    return rng.standard_normal((x.shape[0] + 1,) + x.shape[1:])


def _dynamic(model: onnx.ModelProto, axes=(0,)) -> onnx.ModelProto:
    """``model`` with the listed axes of every graph input made symbolic (``N``, ``d1``, ...)."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for a in axes:
            dims[a].ClearField("dim_value")
            dims[a].dim_param = "N" if a == 0 else f"d{a}"
    return model


@pytest.fixture
def reference_fixes(monkeypatch):
    """Spec-following kernels for three operators that onnx 1.23's reference evaluator gets
    wrong: LRN (its loop over channels runs over the batch size), Mean (adds in place into its
    first input, so cannot broadcast it) and GlobalMaxPool (reduces axes 1-2 of a 3-D input,
    3-4 of a 5-D one).  Tests that use them also compare the forward with ONNX Runtime's."""
    from onnx.reference.ops import op_global_max_pool, op_lrn, op_mean

    def lrn(self, x, alpha=None, beta=None, bias=None, size=None):
        c, before, after = x.shape[1], (size - 1) // 2, size // 2
        sq = x * x
        total = np.stack([sq[:, max(0, i - before): min(c, i + after + 1)].sum(axis=1) for i in range(c)], axis=1)
        return ((x / (bias + alpha / size * total) ** beta).astype(x.dtype),)

    monkeypatch.setattr(op_lrn.LRN, "_run", lrn)
    monkeypatch.setattr(op_mean.Mean, "_run", lambda self, *args: ((sum(args) / len(args)).astype(args[0].dtype),))
    monkeypatch.setattr(op_global_max_pool.GlobalMaxPool, "_run",
                        lambda self, x: (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),))


@pytest.fixture
def checker_allows_group_norm_18(monkeypatch):
    """onnx's checker refuses GroupNormalization-18 as deprecated, though onnx's reference
    evaluator and ONNX Runtime run it and exported files carry it: everything else is checked."""
    real = onnx.checker.check_model

    def check(model, *args, **kwargs):
        try:
            real(model, *args, **kwargs)
        except onnx.checker.ValidationError as exc:
            if "GroupNormalization is deprecated" not in str(exc):
                raise

    monkeypatch.setattr(onnx.checker, "check_model", check)


def _forward_agrees_with_onnxruntime(make, feeds):
    """The (patched) reference forward in float64 equals ONNX Runtime's float32 forward."""
    ref = ReferenceEvaluator(make(DOUBLE)).run(None, feeds)
    ours = _session(make(FLOAT)).run(None, _cast_floats(feeds, FLOAT))
    for r, o in zip(ref, ours):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Smooth and exponential activations
# ---------------------------------------------------------------------------------------

_ACTIVATION_ATTRS = {
    "Softplus": lambda rng: {},
    "Mish": lambda rng: {},
    "Softsign": lambda rng: {},
    "Elu": lambda rng: dict(alpha=float(rng.uniform(0.2, 2.0))),
    "Selu": lambda rng: dict(alpha=float(rng.uniform(0.5, 2.0)), gamma=float(rng.uniform(0.5, 2.0))),
    "Celu": lambda rng: dict(alpha=float(rng.uniform(0.3, 2.0))),
    "ThresholdedRelu": lambda rng: dict(alpha=float(rng.uniform(-1.0, 1.5))),
}


@pytest.mark.parametrize("op", list(_ACTIVATION_ATTRS))
def test_smooth_activation(rng, op):
    attrs = _ACTIVATION_ATTRS[op](rng)
    shape = _small_shape(rng, int(rng.integers(1, 5)), budget=SMALL)
    x = 2.5 * rng.standard_normal(shape)
    kink = attrs.get("alpha", 0.0) if op == "ThresholdedRelu" else 0.0
    x = np.where(np.abs(x - kink) < 1e-3, x + 0.01, x)  # finite differences across a kink are meaningless

    def make(dtype):
        return op_model(op, {"x": x}, attrs, dtype=dtype)

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("op", ["Elu", "Selu", "Celu", "ThresholdedRelu"])
def test_activation_at_the_kink(op):
    """At the kink itself the branch is torch's: ``x <= 0`` takes the exponential branch
    (slope alpha, gamma * alpha, 1), and ThresholdedRelu does not pass ``x == alpha``."""
    attrs = dict(alpha=0.75) if op != "Selu" else dict(alpha=1.5, gamma=1.25)  # exact in float32
    x = np.array([-1.0, 0.0, 0.75, 2.0])
    dy = np.array([1.0, 2.0, 3.0, 4.0])
    got = vjp_values(op_model(op, {"x": x}, attrs), {"x": x}, ["x"], {"y0": dy})["x"]
    expected = {
        "Elu": [0.75 * math.exp(-1.0), 2 * 0.75, 3.0, 4.0],
        "Selu": [1.25 * 1.5 * math.exp(-1.0), 2 * 1.25 * 1.5, 3 * 1.25, 4 * 1.25],
        "Celu": [math.exp(-1.0 / 0.75), 2.0, 3.0, 4.0],
        "ThresholdedRelu": [0.0, 0.0, 0.0, 4.0],
    }[op]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# InstanceNormalization, GroupNormalization, LRN
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 18])
def test_instance_normalization(rng, opset):
    """Opset 13 emits ReduceMean with an axes attribute, 18 with an axes input."""
    shape = _small_shape(rng, int(rng.integers(3, 6)), 1, 4, budget=SMALL)
    if math.prod(shape[2:]) == 1:
        shape = shape[:2] + (2,) + shape[3:]
    c = shape[1]
    x = rng.standard_normal(shape)
    consts = {"scale": rng.standard_normal(c), "bias": rng.standard_normal(c)}
    attrs = dict(epsilon=float(rng.uniform(1e-5, 1e-2)))

    def make(dtype):
        return op_model("InstanceNormalization", {"x": x}, attrs, consts, dtype=dtype, opset=opset)

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng, rtol=1e-5)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


def test_group_norm_as_torch_exports_it(rng):
    """``nn.GroupNorm`` from either torch exporter: Reshape(0, G, -1) -> InstanceNormalization
    with unit scale -> Reshape to the input's Shape -> per-channel Mul and Add; batch dynamic."""
    groups = int(rng.integers(1, 4))
    n, c = int(rng.integers(1, 4)), groups * int(rng.integers(1, 3))
    h, w = (int(d) for d in rng.integers(1, 4, size=2))
    x = rng.standard_normal((n, c, h, w))
    inits = {
        "ones": np.ones(groups), "zeros": np.zeros(groups),
        "gamma": rng.standard_normal((c, 1, 1)), "beta": rng.standard_normal((c, 1, 1)),
        "grouped": np.array([0, groups, -1], np.int64),
    }
    nodes = [
        helper.make_node("Reshape", ["x", "grouped"], ["xg"]),
        helper.make_node("InstanceNormalization", ["xg", "ones", "zeros"], ["ng"], epsilon=1e-5),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Reshape", ["ng", "xs"], ["nx"]),
        helper.make_node("Mul", ["nx", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]

    def make(dtype):
        return _dynamic(graph_model(nodes, {"x": x}, ["y"], inits, dtype=dtype))

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng, rtol=1e-5)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)
    # the same file explains another batch size
    x3 = rng.standard_normal((n + 2, c, h, w))
    check_vjp(make(DOUBLE), {"x": x3}, ["x"], rng=rng, rtol=1e-5)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization(rng, opset, checker_allows_group_norm_18):
    """Opset 18: one scale and bias per group (the deprecated definition, which onnx and
    ONNX Runtime still run); from 21: per channel.  float64 runs with ``stash_type`` double
    (the default, float, would compute the statistics in float32)."""
    groups = int(rng.integers(1, 4))
    while True:
        shape = (int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))) + _small_shape(rng, int(rng.integers(1, 3)), 1, 4)
        if math.prod(shape) <= SMALL and math.prod(shape[1:]) // groups > 2:  # two elements normalise to +-1 whatever x
            break
    x = rng.standard_normal(shape)
    k = groups if opset == 18 else shape[1]
    consts = {"scale": rng.standard_normal(k), "bias": rng.standard_normal(k)}
    eps = float(rng.uniform(1e-5, 1e-2))

    def make(dtype):
        attrs = dict(num_groups=groups, epsilon=eps)
        if opset >= 21 and dtype == DOUBLE:
            attrs["stash_type"] = DOUBLE
        model = _dynamic(op_model("GroupNormalization", {"x": x}, attrs, consts, dtype=dtype, opset=opset))
        # the checker wants the output's rank for a node expanded by a context-dependent function
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y0", dtype, ["N", *x.shape[1:]]))
        return model

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng, rtol=1e-5)
    check_vjp(make(DOUBLE), {"x": _another_batch(rng, x)}, ["x"], rng=rng, rtol=1e-5)
    fd_check_ort(make(DOUBLE), {"x": x}, ["x"], rng=rng, rtol=1e-5)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


def test_lrn(rng, reference_fixes):
    size = int(rng.integers(1, 6))  # even sizes (which ONNX Runtime refuses): the window reaches further after
    while True:
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        if math.prod(shape) <= SMALL:
            break
    x = rng.standard_normal(shape)
    # alpha large enough that the cross-channel term matters
    attrs = dict(size=size, alpha=float(rng.uniform(0.5, 3.0)), beta=float(rng.uniform(0.3, 1.0)),
                 bias=float(rng.uniform(0.5, 2.0)))

    def make(dtype):
        return _dynamic(op_model("LRN", {"x": x}, attrs, dtype=dtype))

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_vjp(make(DOUBLE), {"x": _another_batch(rng, x)}, ["x"], rng=rng)
    if size % 2:
        _forward_agrees_with_onnxruntime(make, {"x": x})
        check_ort_float32(make, {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Max, Min, Mean
# ---------------------------------------------------------------------------------------


def _variadic_shapes(rng, k: int) -> list[tuple[int, ...]]:
    sa, sb = _broadcast_pair(rng, max_rank=3)
    shapes = [sa, sb]
    while len(shapes) < k:
        base = shapes[int(rng.integers(0, len(shapes)))]
        shapes.append(tuple(base[int(rng.integers(0, len(base))):]))
    rng.shuffle(shapes)
    return shapes[:k]


@pytest.mark.parametrize("op", ["Max", "Min", "Mean"])
def test_variadic(rng, op, reference_fixes):
    k = int(rng.integers(1, 5))
    names = [f"v{i}" for i in range(k)]
    arrays = {n: rng.standard_normal(s) for n, s in zip(names, _variadic_shapes(rng, k))}
    inputs = {n: a for i, (n, a) in enumerate(arrays.items()) if i == 0 or rng.random() < 0.7}
    consts = {n: a for n, a in arrays.items() if n not in inputs}

    def make(dtype):
        return op_model(op, inputs, consts=consts, input_order=names, dtype=dtype)

    _forward_agrees_with_onnxruntime(make, inputs)
    check_vjp(make(DOUBLE), inputs, list(inputs), rng=rng)
    check_ort_float32(make, inputs, list(inputs), rng=rng)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_ties_go_to_the_first_input(rng, op):
    """Inputs with many equal values: every output position sends its gradient to exactly one
    input, the first (in input order) that attains the extreme; broadcast inputs add up."""
    k = int(rng.integers(2, 5))
    shapes = _variadic_shapes(rng, k)
    arrays = [rng.integers(0, 2, size=s).astype(np.float64) for s in shapes]
    names = [f"v{i}" for i in range(k)]
    out_shape = np.broadcast_shapes(*shapes)
    dy = rng.standard_normal(out_shape)
    full = np.stack([np.broadcast_to(a, out_shape) for a in arrays])
    winner = (np.argmax if op == "Max" else np.argmin)(full, axis=0)  # numpy: the first extreme
    expected = {}
    for i, (n, a) in enumerate(zip(names, arrays)):
        share = np.where(winner == i, dy, 0.0)
        lead = len(out_shape) - a.ndim
        share = share.sum(axis=tuple(range(lead)))
        expected[n] = share.sum(axis=tuple(j for j, d in enumerate(a.shape) if d == 1), keepdims=True)
    feeds = dict(zip(names, arrays))
    for dtype, backend in [(DOUBLE, "ref"), (DOUBLE, "ort"), (FLOAT, "ort")]:
        model = op_model(op, feeds, dtype=dtype)
        got = vjp_values(model, _cast_floats(feeds, dtype), names, _cast_floats({"y0": dy}, dtype), backend=backend)
        for n in names:
            np.testing.assert_allclose(got[n], expected[n], rtol=1e-6, atol=1e-6, err_msg=f"{n} {backend}")
    assert np.isclose(sum(e.sum() for e in expected.values()), dy.sum())


# ---------------------------------------------------------------------------------------
# Tile, DepthToSpace, SpaceToDepth
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", ["static", "dynamic"])
def test_tile(rng, dims):
    """``dynamic``: every axis but the last symbolic; from two such axes on, the split shape is
    computed at run time."""
    while True:
        x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5)), 1, 3, budget=24))
        repeats = [int(r) for r in rng.integers(1, 4, size=x.ndim)]
        if dims == "dynamic" and x.ndim > 1:
            repeats[0] = 1  # the batch is not tiled
        if math.prod(repeats) > 1 and x.size * math.prod(repeats) <= 300:
            break

    def make(dtype):
        model = op_model("Tile", {"x": x}, consts={"repeats": np.array(repeats, np.int64)}, dtype=dtype)
        return _dynamic(model, range(x.ndim)[: max(x.ndim - 1, 1)]) if dims == "dynamic" else model

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)
    if dims == "dynamic":
        check_vjp(make(DOUBLE), {"x": _another_batch(rng, x)}, ["x"], rng=rng)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(rng, mode):
    b = int(rng.integers(1, 4))
    while True:
        n, c, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 3)) * b * b, int(rng.integers(1, 4)), int(rng.integers(1, 4))
        if n * c * h * w <= 100:
            break
    x = rng.standard_normal((n, c, h, w))

    def make(dtype):
        return _dynamic(op_model("DepthToSpace", {"x": x}, dict(blocksize=b, mode=mode), dtype=dtype))

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_vjp(make(DOUBLE), {"x": _another_batch(rng, x)}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


def test_space_to_depth(rng):
    b = int(rng.integers(1, 4))
    while True:
        n, c, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 4)), b * int(rng.integers(1, 3)), b * int(rng.integers(1, 3))
        if n * c * h * w <= 100:
            break
    x = rng.standard_normal((n, c, h, w))

    def make(dtype):
        return _dynamic(op_model("SpaceToDepth", {"x": x}, dict(blocksize=b), dtype=dtype))

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_vjp(make(DOUBLE), {"x": _another_batch(rng, x)}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------

_REDUCTIONS = ["ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd"]


def _reduction_model(rng, op, x, opset, keepdims, axes, dtype=DOUBLE):
    """``axes``: a list, ``None`` (all axes) or ``"noop"`` (empty axes, noop_with_empty_axes)."""
    attrs, consts, order = dict(keepdims=keepdims), {}, ["x"]
    if axes == "noop":
        attrs["noop_with_empty_axes"] = 1
        if rng.random() < 0.5:
            consts["axes"], order = np.zeros(0, np.int64), ["x", "axes"]
    elif axes is not None:
        axes = [a - x.ndim if rng.random() < 0.5 else a for a in axes]
        if opset < 18:
            attrs["axes"] = axes
        else:
            consts["axes"], order = np.array(axes, np.int64), ["x", "axes"]
    return op_model(op, {"x": x}, attrs, consts, input_order=order, opset=opset, dtype=dtype)


def _reduction_input(rng, op, shape):
    if op in ("ReduceL1", "ReduceProd"):
        return _away_from_zero(rng, shape, 0.5, 1.5)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", _REDUCTIONS)
def test_reduction(rng, op, opset, keepdims):
    """Axes as an attribute (opset 13) and as an input (18); sometimes all axes (none given)."""
    x = _reduction_input(rng, op, _small_shape(rng, int(rng.integers(1, 5)), budget=SMALL))
    axes = None
    if rng.random() < 0.8:
        axes = sorted(rng.choice(x.ndim, size=int(rng.integers(1, x.ndim + 1)), replace=False).tolist())
    check_vjp(_reduction_model(rng, op, x, opset, keepdims, axes), {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("op", _REDUCTIONS)
def test_reduction_noop_with_empty_axes(rng, op):
    """``noop_with_empty_axes`` and no axes: the element-wise function (|x| for L1 and L2)."""
    x = _reduction_input(rng, op, _small_shape(rng, int(rng.integers(1, 4)), budget=SMALL))
    model = _reduction_model(rng, op, x, 18, int(rng.integers(0, 2)), "noop")
    check_vjp(model, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceL2", "ReduceLogSumExp", "ReduceProd"])
def test_reduction_float32_in_onnxruntime(rng, op):
    x = _reduction_input(rng, op, _small_shape(rng, int(rng.integers(2, 5)), 2, 4, budget=SMALL))
    axes = sorted(rng.choice(x.ndim, size=int(rng.integers(1, x.ndim)), replace=False).tolist())
    keepdims = int(rng.integers(0, 2))
    draw = int(rng.integers(0, 2**31))

    def make(dtype):  # the same axes draw for both types
        return _dynamic(_reduction_model(np.random.default_rng(draw), op, x, 18, keepdims, axes, dtype=dtype))

    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_extreme_ties_go_to_one_element(rng, op):
    """Many equal values: each slice's gradient goes to its first extreme in row-major order
    of the reduced axes (torch's ``max(dim)``), never split or duplicated."""
    x = rng.integers(0, 2, size=_small_shape(rng, int(rng.integers(1, 5)), 1, 4)).astype(np.float64)
    axes = sorted(rng.choice(x.ndim, size=int(rng.integers(1, x.ndim + 1)), replace=False).tolist())
    keepdims = int(rng.integers(0, 2))
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, kept + axes).reshape([x.shape[a] for a in kept] + [-1])
    pick = np.asarray((np.argmax if op == "ReduceMax" else np.argmin)(moved, axis=-1))
    dy = np.asarray(rng.standard_normal(pick.shape))
    expected = np.zeros_like(moved)
    np.put_along_axis(expected, pick[..., None], dy[..., None], axis=-1)
    expected = np.transpose(expected.reshape([x.shape[a] for a in kept + axes]), np.argsort(kept + axes))
    seed = dy.reshape([1 if a in axes else x.shape[a] for a in range(x.ndim)]) if keepdims else dy
    for dtype, backend in [(DOUBLE, "ref"), (DOUBLE, "ort"), (FLOAT, "ort")]:
        model = _reduction_model(np.random.default_rng(0), op, x, 18, keepdims, axes, dtype=dtype)
        got = vjp_values(model, _cast_floats({"x": x}, dtype), ["x"], _cast_floats({"y0": seed}, dtype), backend=backend)["x"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=backend)


def _product_of_others(x, axes):
    """d prod / d x over ``axes`` by brute force: the product with the element set to 1."""
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        one = x.copy()
        one[idx] = 1.0
        out[idx] = np.prod(one, axis=tuple(axes), keepdims=True)[tuple(0 if a in axes else i for a, i in enumerate(idx))]
    return out


def test_reduce_prod_with_zeros(rng):
    """A slice with no zero, one zero, and two zeros: no division by zero, exact values."""
    x = _away_from_zero(rng, (3, 4), 0.5, 1.5)
    x[1, 2] = 0.0
    x[2, 0] = x[2, 3] = 0.0
    model = _reduction_model(rng, "ReduceProd", x, 18, 1, [1])
    dy = rng.standard_normal((3, 1))
    expected = dy * _product_of_others(x, [1])
    assert np.count_nonzero(expected[1]) == 1 and not expected[2].any()
    for dtype, backend in [(DOUBLE, "ref"), (DOUBLE, "ort"), (FLOAT, "ort")]:
        model = _reduction_model(np.random.default_rng(0), "ReduceProd", x, 18, 1, [1], dtype=dtype)
        got = vjp_values(model, _cast_floats({"x": x}, dtype), ["x"], _cast_floats({"y0": dy}, dtype), backend=backend)["x"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=backend)


def test_reduce_l2_of_zeros_is_zero():
    """An all-zero slice (a dead channel after ReLU) gets a zero gradient, not NaN."""
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, -4.0]])
    model = _reduction_model(np.random.default_rng(0), "ReduceL2", x, 18, 0, [1])
    got = vjp_values(model, {"x": x}, ["x"], {"y0": np.array([2.0, 5.0])})["x"]
    np.testing.assert_allclose(got, [[0.0, 0.0, 0.0], [3.0, 0.0, -4.0]], rtol=1e-12)


def test_global_max_pool(rng, reference_fixes):
    shape = _small_shape(rng, int(rng.integers(3, 5)), 1, 4, budget=SMALL)
    x = rng.standard_normal(shape)

    def make(dtype):
        return _dynamic(op_model("GlobalMaxPool", {"x": x}, dtype=dtype))

    _forward_agrees_with_onnxruntime(make, {"x": x})
    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_vjp(make(DOUBLE), {"x": _another_batch(rng, x)}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)
    # plateaus: one arg-max per channel, the first in row-major order
    ties = rng.integers(0, 2, size=shape).astype(np.float32)
    dy = rng.standard_normal(shape[:2] + (1,) * (len(shape) - 2)).astype(np.float32)
    got = vjp_values(make(FLOAT), {"x": ties}, ["x"], {"y0": dy}, backend="ort")["x"]
    flat = ties.reshape(shape[0], shape[1], -1)
    expected = np.zeros_like(flat)
    np.put_along_axis(expected, flat.argmax(-1)[..., None], dy.reshape(shape[0], shape[1], 1), axis=-1)
    np.testing.assert_array_equal(got, expected.reshape(shape))


# ---------------------------------------------------------------------------------------
# Behaviours of existing rules on forms found in foreign files
# ---------------------------------------------------------------------------------------


def test_cast_between_float_types(rng):
    """float64 -> float32 -> float16 -> float64 and back: each gradient is cast to its
    primal's type, and the value is the product of the Muls at the precisions in between."""
    shape = _small_shape(rng, int(rng.integers(1, 4)), budget=SMALL)
    x = rng.standard_normal(shape)
    w32, w16 = np.float32(rng.uniform(0.5, 2)), np.float16(rng.uniform(0.5, 2))
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=FLOAT),
        helper.make_node("Mul", ["x32", "w32"], ["m32"]),
        helper.make_node("Cast", ["m32"], ["x16"], to=onnx.TensorProto.FLOAT16),
        helper.make_node("Mul", ["x16", "w16"], ["m16"]),
        helper.make_node("Cast", ["m16"], ["y"], to=DOUBLE),
    ]
    model = graph_model(nodes, {"x": x}, ["y"], {"w32": np.array(w32), "w16": np.array(w16)})
    dy = rng.standard_normal(shape)
    expected = ((dy.astype(np.float16) * w16).astype(np.float32) * w32).astype(np.float64)
    for backend in ("ref", "ort"):
        got = vjp_values(model, {"x": x}, ["x"], {"y": dy}, backend=backend)["x"]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=2e-3)
    # a float32 input promoted to float64: the gradient comes back as float32
    x32 = x.astype(np.float32)
    up = graph_model([helper.make_node("Cast", ["x"], ["x64"], to=DOUBLE), helper.make_node("Tanh", ["x64"], ["y"])],
                     {"x": x32}, ["y"], dtype=FLOAT)
    up.graph.output[0].type.tensor_type.elem_type = DOUBLE
    got = vjp_values(up, {"x": x32}, ["x"], {"y": dy}, backend="ort")["x"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, dy * (1 - np.tanh(x32.astype(np.float64)) ** 2), rtol=1e-6)


def _constant(name, array=None, **attrs):
    if array is not None:
        attrs["value"] = numpy_helper.from_array(np.asarray(array), name)
    return helper.make_node("Constant", [], [name], name=f"const_{name}", **attrs)


def test_masked_fill_with_constant_condition(rng):
    """torch's ``masked_fill``: Where(Constant condition, scalar, x); x gets dY where the
    condition is false."""
    shape = _small_shape(rng, int(rng.integers(1, 4)), budget=SMALL)
    x, cond = rng.standard_normal(shape), rng.random(shape[int(rng.integers(0, len(shape))):]) < 0.5

    def make(dtype):
        fill = np.array(-4.0, np.float32 if dtype == FLOAT else np.float64)
        nodes = [_constant("cond", cond), _constant("fill", fill), helper.make_node("Where", ["cond", "fill", "x"], ["y"])]
        return graph_model(nodes, {"x": x}, ["y"], dtype=dtype)

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


def test_weights_in_constant_nodes(rng):
    """paddle2onnx style: Conv weight and bias, an Add term, Slice and Pad parameters, a Gemm
    weight and a Mul scalar all come from Constant nodes (``value``, ``value_ints``,
    ``value_float``), none from initializers."""
    n, c, s = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(3, 5))
    k, classes = int(rng.integers(1, 4)), int(rng.integers(2, 4))
    x = rng.standard_normal((n, c, s, s))
    w, b = rng.standard_normal((k, c, 3, 3)), rng.standard_normal(k)
    shift = rng.standard_normal((k, 1, 1))
    fc, fcb = rng.standard_normal((classes, k * (s - 1) * (s - 1))), rng.standard_normal(classes)
    scale = float(rng.uniform(0.5, 2))

    def make(dtype):
        f = np.float32 if dtype == FLOAT else np.float64
        nodes = [
            _constant("w", w.astype(f)), _constant("b", b.astype(f)), _constant("shift", shift.astype(f)),
            _constant("starts", value_ints=[1, 1]), _constant("ends", value_ints=[s, s]),
            _constant("axes", value_ints=[2, 3]), _constant("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64)),
            _constant("fc", fc.astype(f)), _constant("fcb", fcb.astype(f)), _constant("scale", value_float=scale),
            helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["conv", "shift"], ["shifted"]),
            helper.make_node("Tanh", ["shifted"], ["act"]),
            helper.make_node("Slice", ["act", "starts", "ends", "axes"], ["cut"]),  # s-1 x s-1
            helper.make_node("Pad", ["cut", "pads"], ["padded"]),  # s x s, shifted by one
            helper.make_node("Slice", ["padded", "starts", "ends", "axes"], ["cut2"]),
            helper.make_node("Flatten", ["cut2"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
        ]
        if dtype == FLOAT:
            nodes.append(helper.make_node("Mul", ["logits", "scale"], ["y"]))
        else:
            nodes += [helper.make_node("Cast", ["scale"], ["scale64"], to=DOUBLE),
                      helper.make_node("Mul", ["logits", "scale64"], ["y"])]
        return _dynamic(graph_model(nodes, {"x": x}, ["y"], dtype=dtype))

    model = make(DOUBLE)
    assert not model.graph.initializer
    check_vjp(model, {"x": x}, ["x"], rng=rng)
    check_vjp(model, {"x": _another_batch(rng, x)}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("opset", [7, 9])
def test_upsample_from_an_old_opset(rng, opset, mode):
    """Upsample exists up to opset 9 only (scales an attribute before 9, an input from 9);
    ONNX Runtime runs it in float32 only, the reference evaluator hardly at all.  After ONNX's
    version converter (Upsample -> Resize) the file must mean the same -- onnx's converter alone
    gives a linear Resize half_pixel coordinates, another function; the loader's upgrade keeps
    Upsample's asymmetric ones -- and its gradient is exact."""
    n, c, h, w = (int(d) for d in rng.integers(1, 4, size=4))
    x = rng.standard_normal((n, c, h, w))
    scales = [1.0, 1.0] + [float(f) for f in rng.integers(1, 4, size=2)]
    if mode == "linear":
        scales[2] = scales[3] = 2.0  # an interpolation on both axes

    def old(dtype):
        if opset < 9:
            node, inits = helper.make_node("Upsample", ["x"], ["y"], mode=mode, scales=scales), []
        else:
            node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)
            inits = [numpy_helper.from_array(np.array(scales, np.float32), "scales")]
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, list(x.shape))],
                                  [helper.make_tensor_value_info("y", dtype, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    def converted(dtype):
        return upgrade_opset(old(dtype), 13)

    assert "Upsample" not in {node.op_type for node in converted(DOUBLE).graph.node}
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(_session(converted(FLOAT)).run(None, {"x": x32})[0], _session(old(FLOAT)).run(None, {"x": x32})[0])
    check_vjp(converted(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(converted, {"x": x}, ["x"], rng=rng)
    dy = rng.standard_normal((n, c, int(h * scales[2]), int(w * scales[3])))
    expected = vjp_values(converted(DOUBLE), {"x": x}, ["x"], {"y": dy})["x"]
    got = vjp_values(old(DOUBLE), {"x": x}, ["x"], {"y": dy})["x"]  # the loader upgrades it itself
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Refusals name the operator and the problem
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["InstanceNormalization", "GroupNormalization", "Tile"])
def test_unsupported_inputs_are_refused(rng, op):
    """A gradient for normalisation parameters, or Tile repeats computed at run time."""
    x = rng.standard_normal((2, 4, 3))
    if op == "Tile":
        inputs = {"x": x, "r": np.array([1, 2, 1], np.int64)}
        nodes = [helper.make_node("Cast", ["r"], ["repeats"], to=onnx.TensorProto.INT64),
                 helper.make_node("Tile", ["x", "repeats"], ["y"], name="the_node")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", DOUBLE, list(x.shape)),
                                               helper.make_tensor_value_info("r", onnx.TensorProto.INT64, [3])],
                                  [helper.make_tensor_value_info("y", DOUBLE, None)])
        model, wrt, problem = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), ["x"], "repeats"
    else:
        attrs = dict(num_groups=2) if op == "GroupNormalization" else {}
        model = op_model(op, {"x": x, "scale": rng.standard_normal(4)}, attrs, {"bias": rng.standard_normal(4)}, opset=21)
        model.graph.node[0].name = "the_node"
        wrt, problem = ["scale"], "parameters"
    with pytest.raises(UnsupportedOperatorError) as info:
        add_vjp(model, ["y0" if op != "Tile" else "y"], wrt)
    assert info.value.op_type == op and info.value.node_name == "the_node" and problem in str(info.value)
