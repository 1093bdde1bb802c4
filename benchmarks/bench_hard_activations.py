"""HardSwish / HardSigmoid backward: the forms ONNX Runtime's CPU provider could run, timed.

Each form computes dx = dy * f'(x) for one activation tensor, alone in a session (ONNX
Runtime CPU, fixed threads, no spin-waiting), timed side by side in interleaved rounds
(median), and is checked against torch autograd on the same float32 values, the bounds
-3 and 3, the floats next to them and huge magnitudes included ("mismatches": elements
whose value differs from torch's by more than float32 rounding).  "rule" is the graph the
vector-Jacobian rule emits (``onnx_explain/autodiff/rules/activations.py``); in a whole
model its HardSwish backward shares the forward's hard-sigmoid, one pass less than here.

    python benchmarks/bench_hard_activations.py [--shapes 8x16x112x112,8x576x7x7] [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_explain.autodiff import add_vjp
from onnx_explain.pruning import prune

F = TensorProto.FLOAT
K = 2.0 ** 60  # the rule's step gain: HardSigmoid(v, -K, b K) = [v < b]
CONSTANTS = {"three": 3.0, "mthree": -3.0, "half": 0.5, "zero": 0.0, "one": 1.0, "sixth": 1 / 6}


def _n(op, inputs, output, **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


# dx from x and dy; every form but the first gives torch's values at the bounds.
HARDSWISH = {
    "Where (before)": [  # torch < 2.x's bounds: x/3 + 1/2 at -3 and 3 themselves
        _n("Div", ["x", "three"], "v"), _n("Add", ["v", "half"], "u"), _n("LessOrEqual", ["x", "three"], "le"),
        _n("Where", ["le", "u", "one"], "l1"), _n("Less", ["x", "mthree"], "lt"), _n("Where", ["lt", "zero", "l1"], "l"),
        _n("Mul", ["dy", "l"], "dx")],
    "compare + Cast": [  # (x/3 + 1/2) [|x| < 3] + [x >= 3]
        _n("Div", ["x", "three"], "v"), _n("Add", ["v", "half"], "u"), _n("Abs", ["x"], "a"),
        _n("Less", ["a", "three"], "in"), _n("Cast", ["in"], "inf", to=F), _n("GreaterOrEqual", ["x", "three"], "ge"),
        _n("Cast", ["ge"], "gef", to=F), _n("Mul", ["u", "inf"], "um"), _n("Add", ["um", "gef"], "l"), _n("Mul", ["dy", "l"], "dx")],
    "HardSigmoid steps": [  # the same with one-pass steps (torch's very x/3 + 1/2 inside)
        _n("Div", ["x", "three"], "v"), _n("Add", ["v", "half"], "u"), _n("Abs", ["x"], "a"),
        _n("HardSigmoid", ["a"], "in", alpha=-K, beta=3 * K), _n("HardSigmoid", ["x"], "lt", alpha=-K, beta=3 * K),
        _n("Mul", ["u", "in"], "um"), _n("Sub", ["one", "lt"], "ge"), _n("Add", ["um", "ge"], "l"), _n("Mul", ["dy", "l"], "dx")],
}
HARDSIGMOID = {  # torch: dy / 6 strictly inside (-3, 3)
    "affine + compare + Cast (before)": [
        _n("Mul", ["x", "sixth"], "ax"), _n("Add", ["ax", "half"], "v"), _n("Greater", ["v", "zero"], "g"),
        _n("Less", ["v", "one"], "l"), _n("And", ["g", "l"], "m"), _n("Cast", ["m"], "mf", to=F),
        _n("Mul", ["dy", "sixth"], "da"), _n("Mul", ["da", "mf"], "dx")],
    "compare + Cast on x": [
        _n("Greater", ["x", "mthree"], "g"), _n("Less", ["x", "three"], "l"), _n("And", ["g", "l"], "m"),
        _n("Cast", ["m"], "mf", to=F), _n("Mul", ["dy", "mf"], "dm"), _n("Mul", ["dm", "sixth"], "dx")],
}


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _form_model(nodes) -> onnx.ModelProto:
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes, "form", [helper.make_tensor_value_info(k, F, None) for k in ("x", "dy") if k in used],
        [helper.make_tensor_value_info("dx", F, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in CONSTANTS.items() if k in used])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _rule_model(op: str, attrs: dict) -> onnx.ModelProto:
    """The rule's backward of ``op`` alone: inputs x and dy, output dx."""
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], op,
                              [helper.make_tensor_value_info("x", F, ["N", "C", "H", "W"])],
                              [helper.make_tensor_value_info("y", F, ["N", "C", "H", "W"])])
    vjp = add_vjp(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), ["y"], ["x"])
    seed = next(i.name for i in vjp.graph.input if i.name != "x")
    vjp = prune(vjp, ["x", seed], ["grad_x"])
    for value in list(vjp.graph.input) + list(vjp.graph.output):
        value.name = {"x": "x", seed: "dy", "grad_x": "dx"}[value.name]
    for node in vjp.graph.node:
        node.input[:] = ["dy" if i == seed else i for i in node.input]
        node.output[:] = ["dx" if o == "grad_x" else o for o in node.output]
    return vjp


def _values(shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    edges = [-3, 3, np.nextafter(np.float32(-3), 0), np.nextafter(np.float32(3), 0),
             np.nextafter(np.float32(-3), -9), np.nextafter(np.float32(3), 9), 1e8, -1e8, 0]
    x.flat[: len(edges)] = edges
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="8x16x112x112,8x576x7x7")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    print(f"onnxruntime {ort.__version__}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    for text in args.shapes.split(","):
        shape = tuple(int(d) for d in text.split("x"))
        x = _values(shape)
        dy = np.random.default_rng(1).uniform(0.5, 2.0, shape).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        for op, forms, attrs, fn in (
                ("HardSwish", HARDSWISH, {}, torch.nn.functional.hardswish),
                ("HardSigmoid", HARDSIGMOID, {"alpha": 1 / 6, "beta": 0.5}, torch.nn.functional.hardsigmoid)):
            want = torch.autograd.grad(fn(xt), xt, torch.from_numpy(dy))[0].numpy()
            models = {name: _form_model(nodes) for name, nodes in forms.items()}
            models["rule"] = _rule_model(op, attrs)
            sessions = {name: _session(m, args.threads) for name, m in models.items()}
            feeds = {name: {i.name: {"x": x, "dy": dy}[i.name] for i in s.get_inputs()} for name, s in sessions.items()}
            results = {name: s.run(None, feeds[name])[0] for name, s in sessions.items()}
            times: dict[str, list[float]] = {name: [] for name in sessions}
            for _ in range(args.rounds):
                for name, s in sessions.items():
                    t0 = time.perf_counter()
                    s.run(None, feeds[name])
                    times[name].append(time.perf_counter() - t0)
            print(f"{op} backward, {text}:")
            for name, t in times.items():
                bad = int(np.sum(~np.isclose(results[name] / dy, want / dy, rtol=1e-6, atol=1e-6)))
                passes = sum(1 for n in models[name].graph.node if n.op_type != "Identity")
                print(f"  {name:<34} {1000 * statistics.median(t):7.3f} ms  {passes:2d} passes  mismatches {bad}")


if __name__ == "__main__":
    main()
