"""Every vector-Jacobian rule on small hand-built ONNX graphs, against central differences.

Each test draws its shapes and attributes from a ``numpy.random.Generator`` seeded by the
test's name and a seed parameter, so every seed is a different case.  The emitted VJP is
run in float64 with ONNX's reference evaluator and compared with central finite
differences (:func:`gradcheck.check_vjp`).

The rules follow ONNX Runtime, which is what users run.  Where onnx 1.23's reference
evaluator cannot run a graph or disagrees with ONNX Runtime, the truth comes from ONNX
Runtime instead: finite differences through ORT in float64 (MaxPool, Slice, Pad with
negative pads), or, for ops that are affine in their input and that ORT runs in float32
only, the exact adjoint of ORT's own forward (AveragePool with ``ceil_mode``, Conv whose
gradient is a grouped ``ConvTranspose``).  Reference-evaluator problems met here: float32
``Erf`` for doubles, grouped ``ConvTranspose``, MaxPool output shapes (asymmetric pads at
stride 1) and arg-max ``Indices``, AveragePool ``ceil_mode`` divisors, Slice start clamping
with step -1, no negative Pad.  A representative subset (Conv, MaxPool, AveragePool,
Resize, LayerNormalization, a chain) also runs as float32 in ONNX Runtime CPU and is
compared with the float64 result.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import central_differences, check_vjp, single_op_model
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_explain.autodiff import add_vjp
from onnx_explain.errors import UnsupportedOperatorError

SEEDS = [0, 1, 2, 3]
DOUBLE, FLOAT = TensorProto.DOUBLE, TensorProto.FLOAT
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
MAX_ELEMS = 300  # per differentiated input: keeps the finite differences fast


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed{s}")
def rng(request) -> np.random.Generator:
    """A generator specific to this test function and seed."""
    return np.random.default_rng([request.param, zlib.crc32(request.node.originalname.encode())])


@pytest.fixture
def float64_erf(monkeypatch):
    """onnx 1.23's reference ``Erf`` rounds to float32 even for doubles, which drowns the
    finite differences; give it a float64 ``erf`` (only the evaluator changes, not the graph)."""
    from onnx.reference.ops import op_erf

    erf64 = np.vectorize(math.erf, otypes=[np.float64])
    monkeypatch.setattr(op_erf.Erf, "_run", lambda self, x: (erf64(x).astype(x.dtype),))


# ---------------------------------------------------------------------------------------
# building and running graphs
# ---------------------------------------------------------------------------------------


def _cast_floats(arrays: dict[str, np.ndarray] | None, dtype) -> dict[str, np.ndarray]:
    """float64 arrays (the graph's float type) to ``dtype``; others (float32 scales) unchanged."""
    np_dtype = np.float32 if dtype == FLOAT else np.float64
    return {k: (v.astype(np_dtype) if v.dtype == np.float64 else v) for k, v in (arrays or {}).items()}


def op_model(op_type, inputs, attrs=None, consts=None, *, dtype=DOUBLE, **kw) -> onnx.ModelProto:
    """``single_op_model`` whose float initializers follow ``dtype``."""
    return single_op_model(op_type, _cast_floats(inputs, dtype), attrs, _cast_floats(consts, dtype), dtype=dtype, **kw)


def graph_model(nodes, inputs, outputs, inits=None, *, opset=18, dtype=DOUBLE, extra_opsets=()) -> onnx.ModelProto:
    """A graph of ``nodes`` with float graph ``inputs`` (name -> example) and float ``outputs``."""
    inits = _cast_floats(inits, dtype)
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(k, dtype, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, dtype, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def _forward(model, feeds, backend: str) -> dict[str, np.ndarray]:
    if backend == "ort":
        outs = _session(model).run(None, feeds)
    else:
        outs = ReferenceEvaluator(model).run(None, feeds)
    return dict(zip(_output_names(model), outs))


def vjp_values(model, feeds, wrt, seeds, *, backend="ref", mode="plain") -> dict[str, np.ndarray]:
    """Run ``add_vjp(model)`` on ``feeds`` + ``seeds`` (``{output: seed}``) with ``backend``."""
    vjp = add_vjp(model, list(seeds), list(wrt), mode=mode)
    onnx.checker.check_model(vjp)
    got = _forward(vjp, {**feeds, **{f"grad_{k}": v for k, v in seeds.items()}}, backend)
    return {w: got[f"grad_{w}"] for w in wrt}


def random_seeds(model, feeds, outputs, rng, backend="ref") -> dict[str, np.ndarray]:
    ys = _forward(model, feeds, backend)
    return {o: rng.standard_normal(ys[o].shape) for o in outputs}


def fd_check_ort(model, feeds, wrt, outputs=None, *, eps=1e-6, rtol=1e-6, atol=1e-8, rng=None):
    """``check_vjp`` with ONNX Runtime in float64 instead of the reference evaluator."""
    rng = rng or np.random.default_rng(0)
    outputs = list(outputs or _output_names(model))
    seeds = random_seeds(model, feeds, outputs, rng, backend="ort")
    got = vjp_values(model, feeds, wrt, seeds, backend="ort")
    sess = _session(model)
    names = _output_names(model)

    def objective(f):
        out = dict(zip(names, sess.run(None, f)))
        return float(sum(np.sum(seeds[o] * out[o]) for o in outputs))

    for name in wrt:
        x = feeds[name]
        numeric = central_differences(objective, feeds, name, eps)
        assert got[name].shape == x.shape
        np.testing.assert_allclose(got[name], numeric, rtol=rtol, atol=atol + 1e-6 * np.abs(numeric).max())
    return got


def check_ort_float32(make, feeds, wrt, outputs=None, *, rng, truth="ref", rtol=1e-4):
    """The float32 VJP in ONNX Runtime equals the float64 truth.

    ``make(dtype)`` builds the same graph in float64 and float32.  ``truth``: ``"ref"`` the
    float64 VJP run by the reference evaluator, ``"ort"`` the float64 VJP run by ONNX
    Runtime, ``"adjoint"`` the exact adjoint of ONNX Runtime's float32 forward (for a graph
    that is affine in its single input).
    """
    m64, m32 = make(DOUBLE), make(FLOAT)
    outputs = list(outputs or _output_names(m64))
    if truth == "adjoint":
        (w,) = wrt
        seeds = random_seeds(m32, _cast_floats(feeds, FLOAT), outputs, rng, backend="ort")
        expected = {w: exact_adjoint_ort(m32, _cast_floats(feeds, FLOAT), w, seeds)}
    else:
        seeds = random_seeds(m64, feeds, outputs, rng, backend=truth)
        expected = vjp_values(m64, feeds, wrt, seeds, backend=truth)
    got = vjp_values(m32, _cast_floats(feeds, FLOAT), wrt, _cast_floats(seeds, FLOAT), backend="ort")
    for w in wrt:
        assert got[w].dtype == np.float32
        scale = float(np.abs(expected[w]).max()) or 1.0
        np.testing.assert_allclose(got[w], expected[w], rtol=rtol, atol=rtol * scale)
    return got


def exact_adjoint_ort(model, feeds, wrt, seeds) -> np.ndarray:
    """``J^T seed`` of a model *affine* in input ``wrt``, from ONNX Runtime's forward on a basis."""
    sess = _session(model)
    names = _output_names(model)
    x = feeds[wrt]

    def score(value):
        outs = dict(zip(names, sess.run(None, {**feeds, wrt: value})))
        return sum(np.sum(outs[o].astype(np.float64) * s) for o, s in seeds.items())

    offset = score(np.zeros_like(x))
    adj = np.zeros(x.size, dtype=np.float64)
    for i in range(x.size):
        e = np.zeros(x.size, dtype=x.dtype)
        e[i] = 1
        adj[i] = score(e.reshape(x.shape)) - offset
    return adj.reshape(x.shape)


def _small_shape(rng, rank, lo=1, hi=5, budget=MAX_ELEMS) -> tuple[int, ...]:
    while True:
        shape = tuple(int(d) for d in rng.integers(lo, hi + 1, size=rank))
        if math.prod(shape) <= budget:
            return shape


def _away_from_zero(rng, shape, lo=0.3, hi=2.0):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(lo, hi, size=shape)


def _broadcast_pair(rng, max_rank=4):
    """Two shapes that broadcast into each other along different axes (and ranks)."""
    out = _small_shape(rng, int(rng.integers(2, max_rank + 1)), 2, 4, budget=120)
    a = [d if rng.random() < 0.5 else 1 for d in out]
    b = [1 if (ad != 1 and rng.random() < 0.7) else d for ad, d in zip(a, out)]
    # make sure each side really is broadcast somewhere, and one loses leading axes
    a[0], b[0] = 1, out[0]
    b[-1] = 1 if a[-1] != 1 else b[-1]
    cut = int(rng.integers(0, len(b)))
    if rng.random() < 0.5:
        return tuple(a), tuple(b[cut:])
    return tuple(a[cut:]), tuple(b)


# ---------------------------------------------------------------------------------------
# Conv
# ---------------------------------------------------------------------------------------


def _conv_draw(rng, rank: int, kind: str, *, auto_pad: str | None = None, max_stride: int = 3, unit_stride: bool | None = None):
    """Shapes and attributes of a random convolution (``kind``: dense, grouped, depthwise)."""
    while True:
        if kind == "dense":
            group, c_in, c_out = 1, int(rng.integers(1, 4)), int(rng.integers(1, 4))
        elif kind == "grouped":  # several channels per group on both sides
            group = int(rng.integers(2, 4))
            c_in, c_out = group * int(rng.integers(2, 4)), group * int(rng.integers(2, 4))
        else:  # depthwise, with a channel multiplier
            group = c_in = int(rng.integers(2, 5))
            c_out = c_in * int(rng.integers(1, 3))
        kernel = [int(k) for k in rng.integers(1, 4, size=rank)]
        strides = [int(s) for s in rng.integers(1, max_stride + 1, size=rank)]
        if unit_stride:
            strides = [1] * rank
        elif unit_stride is False and all(s == 1 for s in strides):
            strides[int(rng.integers(0, rank))] = int(rng.integers(2, max_stride + 1))
        dilations = [int(d) for d in rng.integers(1, 3, size=rank)]
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
        pads = [int(rng.integers(0, extent[i % rank] + 1)) for i in range(2 * rank)]  # asymmetric
        n = int(rng.integers(1, 3))
        spatial = [int(rng.integers(max(extent[i] - (0 if auto_pad else pads[i] + pads[i + rank]), 1), extent[i] + 5))
                   for i in range(rank)]
        if n * c_in * math.prod(spatial) <= MAX_ELEMS:
            break
    attrs = dict(strides=strides, dilations=dilations, group=group, kernel_shape=kernel)
    if auto_pad is None:
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
    x = rng.standard_normal([n, c_in] + spatial)
    consts = {"w": rng.standard_normal([c_out, c_in // group] + kernel)}
    if rng.random() < 0.5:
        consts["b"] = rng.standard_normal(c_out)
    return x, attrs, consts


def _check_conv(rng, x, attrs, consts):
    def make(dtype):
        return op_model("Conv", {"x": x}, attrs, consts, dtype=dtype)

    vjp = add_vjp(make(DOUBLE), ["y0"], ["x"])
    grouped_transpose = any(
        n.op_type == "ConvTranspose" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in vjp.graph.node
    )
    if grouped_transpose:
        # onnx 1.23's reference ConvTranspose mishandles group > 1 (wrong weight slices):
        # the truth is the exact adjoint of ONNX Runtime's forward (Conv is affine in x).
        check_ort_float32(make, {"x": x}, ["x"], rng=rng, truth="adjoint")
    else:
        check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
        check_ort_float32(make, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("stride", ["unit", "strided"])
@pytest.mark.parametrize("kind", ["dense", "grouped", "depthwise"])
def test_conv2d(rng, kind, stride):
    """Both strides: the rule may emit a different form for unit-stride convolutions."""
    _check_conv(rng, *_conv_draw(rng, 2, kind, unit_stride=stride == "unit"))


@pytest.mark.parametrize("kind", ["dense", "depthwise"])
def test_strided_conv_backward_form(rng, kind):
    """Strided depthwise 2-D: a Conv over the spread gradient, not ONNX Runtime's slow
    depthwise ConvTranspose; strided dense with a kernel wider than 1: ConvTranspose (the
    spread form would cost stride² times the multiply-adds)."""
    while True:  # one channel per group and multiplier 1 / a truly dense kernel
        x, attrs, consts = _conv_draw(rng, 2, kind, unit_stride=False)
        c_out, c_in_g = consts["w"].shape[:2]
        pointwise = attrs["kernel_shape"] == [1, 1]  # its own form: test_pointwise_strided_conv
        if (c_out == attrs["group"]) == (kind == "depthwise") and (kind == "depthwise" or (c_in_g > 1 and not pointwise)):
            break
    vjp = add_vjp(op_model("Conv", {"x": x}, attrs, consts, dtype=DOUBLE), ["y0"], ["x"])
    ops = {n.op_type for n in vjp.graph.node}
    if kind == "depthwise":
        assert "ConvTranspose" not in ops and {"Resize", "Conv"} <= ops, ops
    else:
        assert "ConvTranspose" in ops, ops


@pytest.mark.parametrize("kind", ["dense", "grouped", "depthwise"])
def test_pointwise_strided_conv(rng, kind):
    """1x1 strided (ResNet's shortcuts): mixing channels on dY's grid, then spreading, with
    random pads (a 1x1 window may sit in the padding) and input sizes the stride leaves
    uncovered at the end."""
    while True:
        x, attrs, consts = _conv_draw(rng, 2, kind, unit_stride=False)
        if attrs["kernel_shape"] == [1, 1]:
            break
    vjp = add_vjp(op_model("Conv", {"x": x}, attrs, consts, dtype=DOUBLE), ["y0"], ["x"])
    assert "ConvTranspose" not in {n.op_type for n in vjp.graph.node}
    _check_conv(rng, x, attrs, consts)


@pytest.mark.parametrize("kind", ["dense", "grouped", "depthwise"])
def test_conv1d(rng, kind):
    _check_conv(rng, *_conv_draw(rng, 1, kind))


def test_conv3d(rng):
    _check_conv(rng, *_conv_draw(rng, 3, str(rng.choice(["dense", "depthwise"])), max_stride=2))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("kind", ["dense", "depthwise"])
def test_conv_auto_pad(rng, auto_pad, kind):
    x, attrs, consts = _conv_draw(rng, 2, kind, auto_pad=auto_pad)
    if auto_pad != "VALID":
        attrs["dilations"] = [1, 1]  # ONNX Runtime refuses dilations with SAME_* auto_pad
    _check_conv(rng, x, attrs, consts)


@pytest.mark.parametrize("kind", ["dense", "depthwise"])
def test_conv_same_padding_as_exported(rng, kind):
    """EfficientNet's TF-style "same" padding, folded by the exporter into asymmetric pads.

    For stride 2 on an even input the total padding is odd, and the extra pixel goes at the
    end: ``pads=[0, 0, 1, 1]`` for a 3x3 kernel, ``[1, 1, 2, 2]`` for 5x5.
    """
    k = int(rng.choice([3, 5]))
    c = int(rng.integers(2, 4))
    size = int(rng.choice([6, 8])) if k == 3 else 8
    total = max((math.ceil(size / 2) - 1) * 2 + k - size, 0)
    begin, end = total // 2, total - total // 2
    assert end == begin + 1
    group = c if kind == "depthwise" else 1
    x = rng.standard_normal((1, c, size, size))
    attrs = dict(kernel_shape=[k, k], strides=[2, 2], pads=[begin, begin, end, end], group=group)
    consts = {"w": rng.standard_normal((c * (1 if kind == "depthwise" else 2), c // group, k, k))}
    _check_conv(rng, x, attrs, consts)


def test_conv_weight_gradient_is_refused(rng):
    x, attrs, consts = _conv_draw(rng, 2, "dense")
    w = consts.pop("w")
    model = op_model("Conv", {"x": x, "w": w}, attrs, consts, input_order=["x", "w"] + list(consts))
    with pytest.raises(UnsupportedOperatorError, match="Conv"):
        add_vjp(model, ["y0"], ["w"])


# ---------------------------------------------------------------------------------------
# Gemm, MatMul
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(rng, trans_a, trans_b):
    m, k, n = (int(d) for d in rng.integers(1, 6, size=3))
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    c_shape = [(m, n), (1, n), (n,), (m, 1), (1, 1), ()][int(rng.integers(0, 6))]
    c = rng.standard_normal(c_shape)
    attrs = dict(alpha=float(rng.uniform(-2, 2)), beta=float(rng.uniform(-2, 2)), transA=trans_a, transB=trans_b)
    c_is_input = bool(rng.random() < 0.5)
    inputs = {"a": a, "b": b, **({"c": c} if c_is_input else {})}
    model = op_model("Gemm", inputs, attrs, {} if c_is_input else {"c": c}, input_order=["a", "b", "c"])
    check_vjp(model, inputs, list(inputs), rng=rng)


def test_gemm_without_bias(rng):
    m, k, n = (int(d) for d in rng.integers(1, 6, size=3))
    inputs = {"a": rng.standard_normal((m, k)), "b": rng.standard_normal((n, k))}
    model = op_model("Gemm", inputs, dict(transB=1, alpha=float(rng.uniform(0.5, 2))))
    check_vjp(model, inputs, ["a", "b"], rng=rng)


def test_matmul_2d(rng):
    m, k, n = (int(d) for d in rng.integers(1, 7, size=3))
    inputs = {"a": rng.standard_normal((m, k)), "b": rng.standard_normal((k, n))}
    check_vjp(op_model("MatMul", inputs), inputs, ["a", "b"], rng=rng)


def test_matmul_batched_broadcast(rng):
    m, k, n = (int(d) for d in rng.integers(1, 5, size=3))
    batch = [int(d) for d in rng.integers(2, 4, size=int(rng.integers(1, 3)))]
    # each operand is broadcast along some batch axis: a size-1 dim, or a missing leading axis
    a_batch, b_batch = list(batch), list(batch)
    i = int(rng.integers(0, len(batch)))
    a_batch[i] = 1
    if len(batch) > 1:
        b_batch[1 - i] = 1
    if rng.random() < 0.5:
        a_batch, b_batch = b_batch, a_batch
    cut = int(rng.integers(0, len(batch) + 1))
    if rng.random() < 0.5:
        a_batch = a_batch[cut:]
    else:
        b_batch = b_batch[cut:]
    inputs = {"a": rng.standard_normal(a_batch + [m, k]), "b": rng.standard_normal(b_batch + [k, n])}
    check_vjp(op_model("MatMul", inputs), inputs, ["a", "b"], rng=rng)


def test_matmul_with_constant_weight(rng):
    x = rng.standard_normal(_small_shape(rng, 3, 1, 4) + (int(rng.integers(1, 5)),))
    w = rng.standard_normal((x.shape[-1], int(rng.integers(1, 5))))
    check_vjp(op_model("MatMul", {"x": x}, consts={"w": w}), {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


def test_relu(rng):
    x = _away_from_zero(rng, _small_shape(rng, int(rng.integers(1, 5))), 1e-3)
    check_vjp(op_model("Relu", {"x": x}), {"x": x}, ["x"], rng=rng)


def test_relu_guided(rng):
    """Guided backprop: the gradient passes where the input is positive AND it is positive."""
    x = _away_from_zero(rng, _small_shape(rng, int(rng.integers(1, 5))), 1e-3)
    dy = rng.standard_normal(x.shape)
    model = op_model("Relu", {"x": x})
    got = vjp_values(model, {"x": x}, ["x"], {"y0": dy}, mode="guided")["x"]
    np.testing.assert_array_equal(got, (x > 0) * np.maximum(dy, 0))
    got_ort = vjp_values(op_model("Relu", {"x": x}, dtype=FLOAT), {"x": x.astype(np.float32)}, ["x"],
                         {"y0": dy.astype(np.float32)}, backend="ort", mode="guided")["x"]
    np.testing.assert_array_equal(got_ort, ((x > 0) * np.maximum(dy, 0)).astype(np.float32))


def test_relu_guided_chain(rng):
    """Through two Relus, guided backprop rectifies the gradient at each of them."""
    x = _away_from_zero(rng, _small_shape(rng, 2, 2, 6), 1e-3)
    w = rng.standard_normal((x.shape[-1], x.shape[-1]))
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    model = graph_model(nodes, {"x": x}, ["y"], {"w": w})
    dy = rng.standard_normal((x.shape[0], x.shape[-1]))
    got = vjp_values(model, {"x": x}, ["x"], {"y": dy}, mode="guided")["x"]
    z = np.maximum(x, 0) @ w
    dz = (z > 0) * np.maximum(dy, 0)
    np.testing.assert_allclose(got, (x > 0) * np.maximum(dz @ w.T, 0), rtol=1e-12, atol=1e-12)


def test_leaky_relu(rng):
    x = _away_from_zero(rng, _small_shape(rng, int(rng.integers(1, 5))), 1e-3)
    check_vjp(op_model("LeakyRelu", {"x": x}, dict(alpha=float(rng.uniform(0.01, 0.5)))), {"x": x}, ["x"], rng=rng)


def test_prelu_per_channel(rng):
    shape = _small_shape(rng, int(rng.integers(2, 5)), 1, 5)
    x = _away_from_zero(rng, shape, 1e-3)
    slope_shape = (shape[1],) + (1,) * (len(shape) - 2)  # one slope per channel
    if rng.random() < 0.3:
        slope_shape = (1,)
    model = op_model("PRelu", {"x": x}, consts={"slope": rng.uniform(-0.5, 0.5, size=slope_shape)})
    check_vjp(model, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("bounds", ["min", "max", "min_max"])
def test_clip(rng, bounds):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    lo, hi = sorted(rng.uniform(-1, 1, size=2))
    consts, order = {}, ["x", "", ""]
    if "min" in bounds:
        consts["lo"], order[1] = np.array(lo), "lo"
    if "max" in bounds:
        consts["hi"], order[2] = np.array(hi), "hi"
    while order[-1] == "":
        order.pop()
    model = op_model("Clip", {"x": x}, consts=consts, input_order=order)
    check_vjp(model, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Erf", "HardSigmoid", "HardSwish"])
def test_pointwise_activation(rng, op, float64_erf):
    x = 2.5 * rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    attrs = {}
    if op == "HardSigmoid":
        attrs = dict(alpha=float(rng.uniform(0.1, 0.5)), beta=float(rng.uniform(0.2, 0.8)))
    check_vjp(op_model(op, {"x": x}, attrs), {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(rng, approximate, float64_erf):
    x = 2 * rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    model = op_model("Gelu", {"x": x}, dict(approximate=approximate), opset=20)
    check_vjp(model, {"x": x}, ["x"], rng=rng)


def test_softmax(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    axis = int(rng.integers(-x.ndim, x.ndim))
    check_vjp(op_model("Softmax", {"x": x}, dict(axis=axis)), {"x": x}, ["x"], rng=rng)


def test_log_softmax(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    axis = int(rng.integers(-x.ndim, x.ndim))
    check_vjp(op_model("LogSoftmax", {"x": x}, dict(axis=axis)), {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Elementwise arithmetic
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_broadcast(rng, op):
    sa, sb = _broadcast_pair(rng)
    if rng.random() < 0.5:
        sa, sb = sb, sa
    inputs = {"a": rng.standard_normal(sa), "b": _away_from_zero(rng, sb, 0.5)}
    check_vjp(op_model(op, inputs), inputs, ["a", "b"], rng=rng)


@pytest.mark.parametrize("op", ["Add", "Mul", "Div"])
def test_binary_one_operand_constant(rng, op):
    sa, sb = _broadcast_pair(rng)
    x, c = rng.standard_normal(sa), _away_from_zero(rng, sb, 0.5)
    order = ["x", "c"] if rng.random() < 0.5 else ["c", "x"]
    check_vjp(op_model(op, {"x": x}, consts={"c": c}, input_order=order), {"x": x}, ["x"], rng=rng)


def test_sum(rng):
    sa, sb = _broadcast_pair(rng)
    sc = sa[int(rng.integers(0, len(sa))):]
    inputs = {"a": rng.standard_normal(sa), "b": rng.standard_normal(sb), "c": rng.standard_normal(sc)}
    wrt = [k for k in inputs if rng.random() < 0.7] or ["a"]
    check_vjp(op_model("Sum", inputs), inputs, wrt, rng=rng)


@pytest.mark.parametrize("op", ["Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Abs", "Identity"])
def test_unary_arithmetic(rng, op):
    shape = _small_shape(rng, int(rng.integers(1, 5)))
    if op in ("Sqrt", "Log"):
        x = rng.uniform(0.2, 3.0, size=shape)
    else:
        x = _away_from_zero(rng, shape, 0.2)
    check_vjp(op_model(op, {"x": x}), {"x": x}, ["x"], rng=rng)


def test_pow(rng):
    shape = _small_shape(rng, int(rng.integers(1, 4)))
    x = rng.uniform(0.3, 2.0, size=shape)
    p_shape = [(), shape[-1:], shape][int(rng.integers(0, 3))]
    p = rng.uniform(-2.5, 3.0, size=p_shape)
    check_vjp(op_model("Pow", {"x": x}, consts={"p": p}), {"x": x}, ["x"], rng=rng)
    # an integer exponent, negative bases included
    xn = _away_from_zero(rng, shape, 0.3)
    check_vjp(op_model("Pow", {"x": xn}, consts={"p": np.array(float(rng.integers(2, 4)))}), {"x": xn}, ["x"], rng=rng)


def test_cast_double_to_double(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 4))))
    check_vjp(op_model("Cast", {"x": x}, dict(to=DOUBLE)), {"x": x}, ["x"], rng=rng)


def test_where(rng):
    sa, sb = _broadcast_pair(rng, max_rank=3)
    out = np.broadcast_shapes(sa, sb)
    sc = tuple(d if rng.random() < 0.6 else 1 for d in out)[int(rng.integers(0, len(out))):]
    cond = rng.random(sc) < 0.5
    inputs = {"a": rng.standard_normal(sa), "b": rng.standard_normal(sb)}
    model = op_model("Where", inputs, consts={"cond": cond}, input_order=["cond", "a", "b"])
    check_vjp(model, inputs, ["a", "b"], rng=rng)


def test_expand(rng):
    out = _small_shape(rng, int(rng.integers(2, 5)), 1, 4, budget=150)
    x_shape = [d if rng.random() < 0.5 else 1 for d in out][int(rng.integers(0, len(out))):]
    target = list(out)
    for i in range(len(out) - len(x_shape), len(out)):  # Expand keeps x's dim where the target says 1
        if x_shape[i - (len(out) - len(x_shape))] != 1 and rng.random() < 0.3:
            target[i] = 1
    if rng.random() < 0.3:  # a target shorter than x: x's leading dims stay
        target = target[len(out) - len(x_shape) + int(rng.integers(0, len(x_shape))):]
    x = rng.standard_normal(x_shape)
    model = op_model("Expand", {"x": x}, consts={"shape": np.array(target, dtype=np.int64)})
    check_vjp(model, {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------


def test_batch_normalization_inference(rng):
    shape = _small_shape(rng, int(rng.integers(2, 5)), 1, 5)
    c = shape[1]
    consts = {
        "scale": rng.standard_normal(c), "bias": rng.standard_normal(c),
        "mean": rng.standard_normal(c), "var": rng.uniform(0.1, 2.0, size=c),
    }
    x = rng.standard_normal(shape)
    model = op_model("BatchNormalization", {"x": x}, dict(epsilon=float(rng.uniform(1e-5, 1e-2))), consts)
    check_vjp(model, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("where", ["last", "earlier"])
def test_layer_normalization(rng, where):
    rank = int(rng.integers(2, 5))
    shape = _small_shape(rng, rank, 2, 5)
    axis = -1 if where == "last" else int(rng.integers(0, rank - 1))
    if where == "earlier" and rng.random() < 0.5:
        axis -= rank  # the same axis, counted from the end
    norm_shape = shape[axis % rank:]
    consts = {"scale": rng.standard_normal(norm_shape), "bias": rng.standard_normal(norm_shape)}
    x = rng.standard_normal(shape)
    attrs = dict(axis=axis, epsilon=float(rng.uniform(1e-5, 1e-2)))

    def make(dtype):
        return op_model("LayerNormalization", {"x": x}, attrs, consts, dtype=dtype)

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng, rtol=1e-5)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------


def _pool_draw(rng, *, overlapping: bool | None = None, ceil_mode: int = 0, dilations: bool = False):
    while True:
        kernel = [int(k) for k in rng.integers(1, 4, size=2)]
        if overlapping:
            kernel = [max(k, 2) for k in kernel]
            strides = [int(rng.integers(1, k)) for k in kernel]
        else:
            strides = [int(s) for s in rng.integers(1, 4, size=2)]
        dil = [int(d) for d in rng.integers(1, 3, size=2)] if dilations else [1, 1]
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
        # ONNX Runtime requires pads smaller than the kernel
        pads = [int(rng.integers(0, kernel[i % 2])) for i in range(4)]
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        size = [int(rng.integers(max(extent[i] - pads[i] - pads[i + 2], 1), extent[i] + 6)) for i in range(2)]
        if n * c * math.prod(size) <= MAX_ELEMS:
            break
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode)
    if dilations:
        attrs["dilations"] = dil
    return (n, c, *size), attrs


def _out_size(n, k, s, d, pb, pe, ceil_mode):
    """Pooling output size as ONNX Runtime (and PyTorch) compute it."""
    extent = d * (k - 1) + 1
    span = n + pb + pe - extent
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pb:  # a last window starting in the end padding is dropped
        out -= 1
    return out


def maxpool_reference(x, attrs):
    """Numpy MaxPool and its VJP: each window sends its gradient to ONE arg-max, the first
    in row-major order within the window (ONNX Runtime's and PyTorch's convention)."""
    kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    pads, dil = attrs.get("pads", [0] * 4), attrs.get("dilations", [1, 1])
    n, c, h, w = x.shape
    ho, wo = (_out_size(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + 2], attrs.get("ceil_mode", 0))
              for i in range(2))
    y = np.zeros((n, c, ho, wo))
    arg = np.zeros((n, c, ho, wo, 2), dtype=np.int64)
    for b, ch, i, j in np.ndindex(n, c, ho, wo):
        best, where = -np.inf, None
        for p, q in np.ndindex(*kernel):
            r, s = i * strides[0] - pads[0] + p * dil[0], j * strides[1] - pads[1] + q * dil[1]
            if 0 <= r < h and 0 <= s < w and x[b, ch, r, s] > best:
                best, where = x[b, ch, r, s], (r, s)
        y[b, ch, i, j], arg[b, ch, i, j] = best, where

    def vjp(dy):
        dx = np.zeros_like(x)
        for b, ch, i, j in np.ndindex(n, c, ho, wo):
            r, s = arg[b, ch, i, j]
            dx[b, ch, r, s] += dy[b, ch, i, j]
        return dx

    return y, vjp


def _maxpool_reference_agrees(x, attrs) -> bool:
    """Whether the reference evaluator's MaxPool, arg-max ``Indices`` included, is ORT's.

    onnx 1.23's reference gets the output shape wrong for asymmetric pads at stride 1, and
    its ``Indices`` wrong for some stride-1 windows; the rule scatters to those indices.
    """
    model = op_model("MaxPool", {"x": x}, attrs, num_outputs=2)
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.INT64
    return _reference_agrees(model, {"x": x})


def _reference_agrees(model, feeds) -> bool:
    """Whether ONNX's reference evaluator computes ONNX Runtime's forward for ``model``."""
    try:
        ref = _forward(model, feeds, "ref")
    except Exception:
        return False
    ours = _forward(model, feeds, "ort")
    return all(ref[k].shape == v.shape and np.allclose(ref[k], v, rtol=1e-12, atol=1e-12) for k, v in ours.items())


@pytest.mark.parametrize("variant", ["any", "overlapping", "ceil_mode", "ceil_mode_dropped", "dilations"])
def test_maxpool(rng, variant):
    if variant.startswith("ceil_mode"):
        # overlapping windows: the rule then slices the gradient into groups of windows
        shape, attrs = _ceil_mode_draw(rng, "dropped" if variant.endswith("dropped") else "overhangs", overlapping=True)
    else:
        shape, attrs = _pool_draw(rng, overlapping=True if variant in ("overlapping", "dilations") else None,
                                  ceil_mode=int(rng.random() < 0.3), dilations=variant == "dilations")
    x = rng.standard_normal(shape)

    def make(dtype):
        return op_model("MaxPool", {"x": x}, attrs, dtype=dtype)

    # ONNX Runtime runs MaxPool in float64: finite differences through what users run
    got = fd_check_ort(make(DOUBLE), {"x": x}, ["x"], rng=rng)["x"]
    y, _ = maxpool_reference(x, attrs)
    np.testing.assert_array_equal(_forward(make(DOUBLE), {"x": x}, "ort")["y0"], y)
    if _maxpool_reference_agrees(x, attrs):
        check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng, truth="ort")
    assert got.shape == x.shape


@pytest.mark.parametrize("overlapping", [False, True])
def test_maxpool_ties_go_to_one_argmax(rng, overlapping):
    """Plateaus: finite differences are meaningless, so compare with the numpy convention."""
    shape, attrs = _pool_draw(rng, overlapping=overlapping, ceil_mode=int(rng.random() < 0.5))
    x = rng.integers(0, 3, size=shape).astype(np.float64)  # many equal values
    y, vjp = maxpool_reference(x, attrs)
    dy = rng.standard_normal(y.shape)
    expected = vjp(dy)
    for dtype, backend in [(DOUBLE, "ort"), (FLOAT, "ort"), (DOUBLE, "ref")]:
        model = op_model("MaxPool", {"x": x}, attrs, dtype=dtype)
        feeds = _cast_floats({"x": x}, dtype)
        if backend == "ref" and not _maxpool_reference_agrees(x, attrs):
            continue
        got = vjp_values(model, feeds, ["x"], _cast_floats({"y0": dy}, dtype), backend=backend)["x"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=f"{backend} {dtype}")
        # one arg-max per window: the gradient's total is conserved
        assert np.isclose(got.sum(), dy.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["any", "overlapping", "non_overlapping", "global_window"])
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(rng, variant, count_include_pad):
    if variant == "non_overlapping":  # the rule's fast path: kernel == strides, no pads
        while True:  # a remainder that no window reaches, sometimes
            k = [int(v) for v in rng.integers(1, 4, size=2)]
            shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4))) + tuple(
                int(k[i] * rng.integers(1, 4) + rng.integers(0, k[i])) for i in range(2))
            if math.prod(shape) <= MAX_ELEMS:
                break
        attrs = dict(kernel_shape=k, strides=k)
    elif variant == "global_window":
        shape = _small_shape(rng, 4, 1, 5)
        attrs = dict(kernel_shape=list(shape[2:]))
    else:
        shape, attrs = _pool_draw(rng, overlapping=True if variant == "overlapping" else None)
    attrs["count_include_pad"] = count_include_pad
    x = rng.standard_normal(shape)

    def make(dtype):
        return op_model("AveragePool", {"x": x}, attrs, dtype=dtype)

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


def _ceil_mode_draw(rng, last_window: str, overlapping: bool | None = None):
    """A ``ceil_mode`` pooling whose last window hangs over the end (``"overhangs"``), or would
    start in the end padding so that ONNX Runtime drops it (``"dropped"``)."""
    while True:
        over = bool(rng.random() < 0.5) if overlapping is None else overlapping
        shape, attrs = _pool_draw(rng, ceil_mode=1, overlapping=over)
        k, s, p = attrs["kernel_shape"], attrs["strides"], attrs["pads"]
        overhangs = dropped = False
        for i in range(2):
            span = shape[2 + i] + p[i] + p[i + 2] - k[i]
            overhangs |= span % s[i] != 0
            dropped |= -(-span // s[i]) * s[i] >= shape[2 + i] + p[i]
        if (dropped if last_window == "dropped" else overhangs and not dropped):
            return shape, attrs


@pytest.mark.parametrize("last_window", ["overhangs", "dropped"])
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_ceil_mode_follows_onnxruntime(rng, count_include_pad, last_window):
    """With ``ceil_mode`` the reference evaluator's divisors differ from ONNX Runtime's for
    windows hanging over the end, and ONNX shape inference keeps windows that ONNX Runtime
    drops; the rule follows ONNX Runtime, so the truth here is the exact adjoint of ORT's
    own (linear) forward."""
    shape, attrs = _ceil_mode_draw(rng, last_window)
    attrs["count_include_pad"] = count_include_pad
    x = rng.standard_normal(shape).astype(np.float32)
    model = op_model("AveragePool", {"x": x}, attrs, dtype=FLOAT)
    seeds = random_seeds(model, {"x": x}, ["y0"], rng, backend="ort")
    assert seeds["y0"].shape[2:] == tuple(
        _out_size(shape[2 + i], attrs["kernel_shape"][i], attrs["strides"][i], 1, attrs["pads"][i], attrs["pads"][i + 2], 1)
        for i in range(2))
    expected = exact_adjoint_ort(model, {"x": x}, "x", seeds)
    got = vjp_values(model, {"x": x}, ["x"], _cast_floats(seeds, FLOAT), backend="ort")["x"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_global_average_pool(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(3, 5)), 1, 5))
    check_vjp(op_model("GlobalAveragePool", {"x": x}), {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------


def _reduce_case(rng, op, opset, keepdims):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    all_axes = rng.random() < 0.2
    axes = sorted(rng.choice(x.ndim, size=int(rng.integers(1, x.ndim + 1)), replace=False).tolist())
    axes = [a - x.ndim if rng.random() < 0.5 else a for a in axes]
    attrs, consts, order = dict(keepdims=keepdims), {}, ["x"]
    if not all_axes:
        if op == "ReduceMean" and opset < 18:
            attrs["axes"] = axes
        else:
            consts["axes"], order = np.array(axes, dtype=np.int64), ["x", "axes"]
    model = op_model(op, {"x": x}, attrs, consts, input_order=order, opset=opset)
    check_vjp(model, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean(rng, opset, keepdims):
    _reduce_case(rng, "ReduceMean", opset, keepdims)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_sum(rng, opset, keepdims):
    _reduce_case(rng, "ReduceSum", opset, keepdims)


# ---------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------


def test_flatten(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    axis = int(rng.integers(-x.ndim, x.ndim + 1))
    check_vjp(op_model("Flatten", {"x": x}, dict(axis=axis)), {"x": x}, ["x"], rng=rng)


def test_reshape(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    factors = []
    rest = x.size
    while rest > 1 and rng.random() < 0.8:
        d = int(rng.choice([f for f in range(1, rest + 1) if rest % f == 0]))
        factors.append(d)
        rest //= d
    target = factors + [rest]
    rng.shuffle(target)
    if rng.random() < 0.5:
        target[int(rng.integers(0, len(target)))] = -1
    if target[0] == x.shape[0] and rng.random() < 0.5:
        target[0] = 0  # copy the input's dim
    model = op_model("Reshape", {"x": x}, consts={"shape": np.array(target, dtype=np.int64)})
    check_vjp(model, {"x": x}, ["x"], rng=rng)


def test_transpose(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 6)), 1, 4))
    attrs = {} if rng.random() < 0.2 else dict(perm=rng.permutation(x.ndim).tolist())
    check_vjp(op_model("Transpose", {"x": x}, attrs), {"x": x}, ["x"], rng=rng)


def test_concat(rng):
    base = list(_small_shape(rng, int(rng.integers(1, 4)), 1, 4, budget=60))
    axis = int(rng.integers(-len(base), len(base)))
    k = int(rng.integers(2, 5))
    arrays = {}
    for i in range(k):
        shape = list(base)
        shape[axis] = int(rng.integers(1, 4))
        arrays[f"v{i}"] = rng.standard_normal(shape)
    names = list(arrays)
    on_path = [n for n in names if rng.random() < 0.5] or [names[0]]
    inputs = {n: arrays[n] for n in names if n in on_path or rng.random() < 0.5}  # others: initializers
    consts = {n: arrays[n] for n in names if n not in inputs}
    model = op_model("Concat", inputs, dict(axis=axis), consts, input_order=names)
    check_vjp(model, inputs, on_path, rng=rng)


@pytest.mark.parametrize("opset", [13, 18])
def test_split(rng, opset):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 4)), 2, 6))
    axis = int(rng.integers(-x.ndim, x.ndim))
    n = x.shape[axis]
    if opset == 13:
        cuts = sorted(rng.choice(np.arange(1, n), size=int(rng.integers(1, n)), replace=False).tolist())
        sizes = np.diff([0] + cuts + [n]).astype(np.int64)
        num, attrs, consts = len(sizes), dict(axis=axis), {"split": sizes}
    else:
        num = int(rng.integers(2, n + 1))
        attrs, consts = dict(axis=axis, num_outputs=num), {}
    model = op_model("Split", {"x": x}, attrs, consts, num_outputs=num, opset=opset)
    used = [f"y{i}" for i in range(num) if rng.random() < 0.6] or [f"y{num - 1}"]
    check_vjp(model, {"x": x}, ["x"], outputs=used, rng=rng)


def _slice_bound(rng, n):
    return int(rng.choice([rng.integers(-n - 3, n + 4), INT64_MAX, INT64_MIN, -INT64_MAX]))


def _onnx_slice(n, start, end, step):
    """ONNX Slice's clamping of one axis (the spec's, not Python's), as a Python slice."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), n), min(max(end, 0), n), step)
    start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return slice(start, None if end == -1 else end, step)


def test_slice(rng):
    for _ in range(3):  # cheap: several draws per seed
        _check_slice(rng)


def test_slice_strided(rng):
    """Steps beyond +-1 (``x[:, :, ::2, ::2]``, LeViT's downsampling; reversed with stride)."""
    for _ in range(3):
        _check_slice(rng, steps_from=(2, 3, -2, -3, 1))


def _check_slice(rng, steps_from=(1, -1)):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5)), 1, 6))
    while True:
        axes = [int(a) for a in rng.choice(x.ndim, size=int(rng.integers(1, x.ndim + 1)), replace=False)]
        steps = [int(rng.choice(steps_from)) for _ in axes]
        starts = [_slice_bound(rng, x.shape[a]) for a in axes]
        ends = [_slice_bound(rng, x.shape[a]) for a in axes]
        index = [slice(None)] * x.ndim
        for a, s, e, st in zip(axes, starts, ends, steps):
            index[a] = _onnx_slice(x.shape[a], s, e, st)
        expected = x[tuple(index)]
        if expected.size:
            break
    axes = [a - x.ndim if rng.random() < 0.5 else a for a in axes]
    consts = {"starts": np.array(starts, np.int64), "ends": np.array(ends, np.int64)}
    order = ["x", "starts", "ends"]
    if rng.random() < 0.8 or axes != list(range(len(axes))) or any(s != 1 for s in steps):
        consts["axes"], consts["steps"] = np.array(axes, np.int64), np.array(steps, np.int64)
        order += ["axes", "steps"]
    model = op_model("Slice", {"x": x}, consts=consts, input_order=order)
    np.testing.assert_array_equal(_forward(model, {"x": x}, "ort")["y0"], expected)
    fd_check_ort(model, {"x": x}, ["x"], rng=rng)
    if _reference_agrees(model, {"x": x}):
        check_vjp(model, {"x": x}, ["x"], rng=rng)


@pytest.mark.parametrize("negative", [False, True])
def test_pad_constant(rng, negative):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5)), 1, 5))
    rank = x.ndim
    use_axes = rng.random() < 0.5
    axes = sorted(rng.choice(rank, size=int(rng.integers(1, rank + 1)), replace=False).tolist()) if use_axes else list(range(rank))
    lo = -2 if negative else 0
    while True:
        pads = [int(p) for p in rng.integers(lo, 3, size=2 * len(axes))]
        out = [x.shape[a] + pads[i] + pads[i + len(axes)] for i, a in enumerate(axes)]
        if all(d >= 1 for d in out) and (not negative or min(pads) < 0):
            break
    consts = {"pads": np.array(pads, np.int64), "value": np.array(float(rng.standard_normal()))}
    order = ["x", "pads", "value"]
    if use_axes:
        consts["axes"] = np.array([a - rank if rng.random() < 0.5 else a for a in axes], np.int64)
        order.append("axes")
    model = op_model("Pad", {"x": x}, dict(mode="constant"), consts, input_order=order)
    if negative:  # the reference evaluator cannot crop (onnx 1.23): use ONNX Runtime in float64
        fd_check_ort(model, {"x": x}, ["x"], rng=rng)
    else:
        check_vjp(model, {"x": x}, ["x"], rng=rng)


def test_squeeze(rng):
    shape = [int(d) if rng.random() < 0.6 else 1 for d in rng.integers(2, 5, size=int(rng.integers(2, 6)))]
    shape[int(rng.integers(0, len(shape)))] = 1
    x = rng.standard_normal(shape)
    ones = [i for i, d in enumerate(shape) if d == 1]
    if rng.random() < 0.3:
        model = op_model("Squeeze", {"x": x})
    else:
        axes = rng.choice(ones, size=int(rng.integers(1, len(ones) + 1)), replace=False)
        axes = [int(a) - len(shape) if rng.random() < 0.5 else int(a) for a in axes]
        model = op_model("Squeeze", {"x": x}, consts={"axes": np.array(axes, np.int64)})
    check_vjp(model, {"x": x}, ["x"], rng=rng)


def test_unsqueeze(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 4))))
    out_rank = x.ndim + int(rng.integers(1, 3))
    axes = rng.choice(out_rank, size=out_rank - x.ndim, replace=False)
    axes = [int(a) - out_rank if rng.random() < 0.5 else int(a) for a in axes]
    model = op_model("Unsqueeze", {"x": x}, consts={"axes": np.array(axes, np.int64)})
    check_vjp(model, {"x": x}, ["x"], rng=rng)


def test_dropout_inference(rng):
    x = rng.standard_normal(_small_shape(rng, int(rng.integers(1, 5))))
    with_ratio = rng.random() < 0.5
    inputs = ["x"] + (["ratio"] if with_ratio else [])
    nodes = [helper.make_node("Dropout", inputs, ["y", "mask"])]
    inits = {"ratio": np.array(float(rng.uniform(0.1, 0.9)))} if with_ratio else {}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", DOUBLE, list(x.shape))],
        [helper.make_tensor_value_info("y", DOUBLE, None), helper.make_tensor_value_info("mask", TensorProto.BOOL, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    check_vjp(model, {"x": x}, ["x"], outputs=["y"], rng=rng)


# ---------------------------------------------------------------------------------------
# Resize
# ---------------------------------------------------------------------------------------

_RESIZE_MODES = {
    "nearest": [dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                dict(mode="nearest")],
    "linear_half_pixel": [dict(mode="linear", coordinate_transformation_mode="half_pixel")],
    "linear_pytorch_half_pixel": [dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")],
    "linear_align_corners": [dict(mode="linear", coordinate_transformation_mode="align_corners")],
    "cubic": [dict(mode="cubic", cubic_coeff_a=-0.75, coordinate_transformation_mode="half_pixel"),
              dict(mode="cubic", cubic_coeff_a=-0.5, coordinate_transformation_mode="half_pixel", exclude_outside=1),
              dict(mode="cubic", cubic_coeff_a=-0.75, coordinate_transformation_mode="align_corners")],
}


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("mode", list(_RESIZE_MODES))
def test_resize(rng, mode, direction):
    options = _RESIZE_MODES[mode]
    attrs = dict(options[int(rng.integers(0, len(options)))])
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    by = "scales" if mode == "nearest" and direction == "up" else str(rng.choice(["scales", "sizes"]))
    if direction == "up":
        h, w = (int(d) for d in rng.integers(2, 5, size=2))
        factors = [int(f) for f in rng.integers(1, 4, size=2)] if mode == "nearest" else [float(f) for f in rng.choice([1.5, 2.0, 2.5, 3.0], size=2)]
    else:
        h, w = (int(d) for d in rng.integers(4, 9, size=2))
        factors = [float(f) for f in rng.choice([0.5, 0.75] if mode != "nearest" else [0.5], size=2)]
    x = rng.standard_normal((n, c, h, w))
    if by == "scales":
        consts = {"scales": np.array([1, 1, *factors], np.float32)}
        order = ["x", "", "scales"]
    else:
        consts = {"sizes": np.array([n, c, max(int(h * factors[0]), 1), max(int(w * factors[1]), 1)], np.int64)}
        order = ["x", "", "", "sizes"]

    def make(dtype):
        return op_model("Resize", {"x": x}, attrs, consts, input_order=order, dtype=dtype)

    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


# ---------------------------------------------------------------------------------------
# Graphs: fan-out, unsupported operators
# ---------------------------------------------------------------------------------------


def _chain(rng):
    """conv -> BN -> (relu * sigmoid + itself) -> maxpool -> square -> GAP -> + mean(x) -> Gemm."""
    n, c, s = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(4, 7))
    k = int(rng.integers(2, 5))
    x = rng.standard_normal((n, c, s, s))
    inits = {
        "w": rng.standard_normal((4, c, 3, 3)), "scale": rng.standard_normal(4), "bias": rng.standard_normal(4),
        "mean": rng.standard_normal(4), "var": rng.uniform(0.5, 2, size=4), "fc": rng.standard_normal((4, k)),
        "fcb": rng.standard_normal(k), "two": np.array(2.0),
        "one": np.array([1], np.int64), "axes": np.array([1, 2, 3], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["h"], name="bn"),
        # h fans out into three consumers, x into two
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["h"], ["sg"], name="sigmoid"),
        helper.make_node("Mul", ["r", "sg"], ["m"], name="gate"),
        helper.make_node("Add", ["m", "h"], ["a"], name="residual"),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="pool"),
        helper.make_node("Mul", ["p", "p"], ["p2"], name="square"),  # the same value twice in one node
        helper.make_node("Div", ["p2", "two"], ["q"], name="half"),
        helper.make_node("GlobalAveragePool", ["q"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("ReduceMean", ["x", "axes"], ["xm"], keepdims=0, name="xmean"),
        helper.make_node("Unsqueeze", ["xm", "one"], ["xm1"], name="unsq"),
        helper.make_node("Add", ["f", "xm1"], ["f2"], name="skip"),
        helper.make_node("Gemm", ["f2", "fc", "fcb"], ["logits"], name="fc"),
    ]

    def make(dtype):
        return graph_model(nodes, {"x": x}, ["logits"], inits, dtype=dtype)

    return make, x


def test_chain_with_fan_out(rng):
    """Gradients of a value used several times accumulate."""
    make, x = _chain(rng)
    check_vjp(make(DOUBLE), {"x": x}, ["x"], rng=rng)
    check_ort_float32(make, {"x": x}, ["x"], rng=rng)


def test_two_outputs_and_two_inputs(rng):
    """Seeds on two outputs, gradients for two inputs, one of them shared by both outputs."""
    shape = _small_shape(rng, 2, 2, 5)
    a, b = rng.standard_normal(shape), rng.uniform(0.5, 2, size=shape)
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Tanh", ["ab"], ["y1"]),
             helper.make_node("Log", ["b"], ["lb"]), helper.make_node("Add", ["lb", "ab"], ["y2"])]
    model = graph_model(nodes, {"a": a, "b": b}, ["y1", "y2"])
    check_vjp(model, {"a": a, "b": b}, ["a", "b"], rng=rng)


def _unsupported_model(rng, op: str, domain: str = ""):
    x = rng.standard_normal(_small_shape(rng, 2, 2, 4))
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node(op, ["r"], ["u"], name="the_node", domain=domain),
             helper.make_node("Sigmoid", ["u"], ["y"], name="last")]
    return graph_model(nodes, {"x": x}, ["y"], extra_opsets=[domain] if domain else []), x


@pytest.mark.parametrize("op", ["Cos", "Sin", "Floor"])
def test_unsupported_operator_on_path_raises(rng, op):
    model, _ = _unsupported_model(rng, op)
    with pytest.raises(UnsupportedOperatorError) as info:
        add_vjp(model, ["y"], ["x"])
    assert info.value.op_type == op and info.value.node_name == "the_node"
    assert op in str(info.value) and "the_node" in str(info.value)


def test_custom_domain_operator_on_path_raises(rng):
    model, _ = _unsupported_model(rng, "Relu", domain="com.example")  # a name the default domain knows
    with pytest.raises(UnsupportedOperatorError) as info:
        add_vjp(model, ["y"], ["x"])
    assert "com.example" in info.value.op_type and "Relu" in info.value.op_type
    assert info.value.node_name == "the_node" and "the_node" in str(info.value)


def test_unsupported_operator_off_path_is_fine(rng):
    shape = _small_shape(rng, 2, 2, 5)
    x, z = _away_from_zero(rng, shape, 1e-3), rng.standard_normal(shape)
    nodes = [
        helper.make_node("Cos", ["z"], ["cz"], name="cos_of_other_input"),  # no path from x
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "cz"], ["y"]),
        helper.make_node("Floor", ["x"], ["fx"], name="dead_branch"),  # from x, to no seeded output
        helper.make_node("Custom", ["x"], ["cx"], name="custom_dead", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, DOUBLE, list(shape)) for k in ("x", "z")],
        [helper.make_tensor_value_info("y", DOUBLE, None), helper.make_tensor_value_info("fx", DOUBLE, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    vjp = add_vjp(model, ["y"], ["x"])
    dy = rng.standard_normal(shape)
    pruned = helper.make_model(  # the custom op has no kernel anywhere: evaluate without it
        helper.make_graph([n for n in vjp.graph.node if n.name != "custom_dead"], "g", vjp.graph.input,
                          vjp.graph.output, vjp.graph.initializer),
        opset_imports=vjp.opset_import,
    )
    got = dict(zip(_output_names(pruned), ReferenceEvaluator(pruned).run(None, {"x": x, "z": z, "grad_y": dy})))
    np.testing.assert_allclose(got["grad_x"], (x > 0) * np.cos(z) * dy, rtol=1e-12)
