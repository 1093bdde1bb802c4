"""What the activation masks cost the input gradient: a diagnostic, not a product path.

The backward of ReLU / ReLU6 multiplies the gradient by a 0/1 mask read from the
activation (``Greater`` / ``Less`` / ``And`` / ``Cast`` / ``Mul``).  ONNX Runtime cannot run
those operators in its blocked NCHWc layout, so each mask also costs layout reorders of the
activation and of the gradient.  This script times, side by side in one run on ONNX Runtime
CPU, the plain forward, the explain model's input-gradient run, and the same run with every
mask multiplication removed (a wrong gradient, built only to measure what the masks and
their reorders cost), and the run as ``ExplainSession`` does it on CPU, with the masks kept
in the NCHWc layout (``onnx_explain.nchwc_masks``).  For models with HardSwish /
HardSigmoid (MobileNetV3), also that run with their backward reduced to dy and dy * alpha
(a wrong gradient again; the forward keeps ONNX Runtime's Conv+HardSwish fusion, since
nothing reads the convolution's output any more): what any exact form of theirs can save.

Last, the same run with every activation's backward reduced to one multiplication of the
gradient by a tensor the activation's rule reads anyway (the output for ReLU / ReLU6, the
input for HardSwish / HardSigmoid): a wrong gradient once more, and a lower bound for any
exact form made of ONNX operators, since each must pass over the gradient at least once and
ONNX Runtime fuses no elementwise operator into a convolution's backward.

    python benchmarks/bench_mask_cost.py [--models resnet50,efficientnet_lite0,mobilenet_v3_small] [--batches 1,8]
    python benchmarks/bench_mask_cost.py --models efficientnet_lite0@torchscript,mobilenet_v3_small --batches 8

``NAME@torchscript`` exports with the TorchScript exporter, as in ``bench_explain.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain import contract
from onnx_explain.augment import augment_model
from onnx_explain.autodiff.registry import RULES
from onnx_explain.export import export_plain
from onnx_explain.nchwc_masks import blocked_mask_session
from onnx_explain.pruning import prune

OUTPUTS = [contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS, contract.GRAD_INPUT, "logits"]


def without_masks(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Mul(g, Cast(mask))`` nodes of the gradient subgraph replaced by ``g`` itself."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    producer = {out: node for node in model.graph.node for out in node.output}
    renamed, kept = {}, []
    for node in model.graph.node:
        mask = producer.get(node.input[1]) if node.op_type == "Mul" and len(node.input) == 2 else None
        if node.name.startswith("grad/") and mask is not None and mask.op_type == "Cast":
            renamed[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            while name in renamed:
                name = renamed[name]
            node.input[i] = name
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


@contextlib.contextmanager
def _rules_swapped(swapped: dict):
    """While active, the operators in ``swapped`` have those backward rules (built only to
    size a cost: the gradients are wrong)."""
    import onnx_explain.autodiff.rules  # noqa: F401  (registers the rules first)

    saved = {op: RULES[op] for op in swapped}
    RULES.update(swapped)
    try:
        yield
    finally:
        RULES.update(saved)


def hard_masks_removed():
    """HardSwish's backward reduced to dy and HardSigmoid's to dy * alpha (no masks)."""
    return _rules_swapped({
        "HardSwish": lambda ctx: [ctx.dy[0]],
        "HardSigmoid": lambda ctx: [ctx.op("Mul", ctx.dy[0], ctx.scalar(float(ctx.attr("alpha", 0.2))))],
    })


def one_multiply_per_activation():
    """Each activation's backward reduced to ``dy`` times what its exact rule reads."""

    def by_output(ctx):
        return [ctx.op("Mul", ctx.dy[0], ctx.y)] + [None] * (len(ctx.node.inputs) - 1)

    def by_input(ctx):
        return [ctx.op("Mul", ctx.dy[0], ctx.x)]

    return _rules_swapped({"Relu": by_output, "Clip": by_output, "HardSwish": by_input, "HardSigmoid": by_input})


def _options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _session(model: onnx.ModelProto | str, threads: int) -> ort.InferenceSession:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, _options(threads), providers=["CPUExecutionProvider"])


def _blocked_session(model: onnx.ModelProto, threads: int, scratch: str) -> ort.InferenceSession:
    # a folder of its own: the session maps its weights file, which the next one would overwrite
    return blocked_mask_session(model, _options(threads), ["CPUExecutionProvider"], tempfile.mkdtemp(dir=scratch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,efficientnet_lite0,mobilenet_v3_small")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, 224x224, median of {args.rounds} interleaved rounds")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            name, _, exporter = spec.partition("@")
            plain_path = Path(tmp) / f"{spec}.onnx"
            plain = export_plain(name, plain_path, input_size=224, dynamo=exporter != "torchscript").model
            explain = augment_model(plain, input_gradients=True)
            inputs = ["input", contract.TARGET]
            pruned = prune(explain, inputs, OUTPUTS)
            sessions = {  # pruned after the masks go, so that what computed them goes too
                "forward": (_session(str(plain_path), args.threads), False),
                "input gradient": (_session(pruned, args.threads), True),
                "... masks in NCHWc": (_blocked_session(pruned, args.threads, tmp), True),
                "... without masks": (_session(prune(without_masks(explain), inputs, OUTPUTS), args.threads), True),
            }
            if any(n.op_type in ("HardSwish", "HardSigmoid") for n in plain.graph.node):
                with hard_masks_removed():
                    unmasked = prune(augment_model(plain, input_gradients=True), inputs, OUTPUTS)
                sessions["... in NCHWc, no HardSwish masks"] = (_blocked_session(unmasked, args.threads, tmp), True)
            with one_multiply_per_activation():
                bound = prune(augment_model(plain, input_gradients=True), inputs, OUTPUTS)
            sessions["... in NCHWc, one multiply per activation"] = (
                _blocked_session(bound, args.threads, tmp) or _session(bound, args.threads), True)
            for batch in [int(b) for b in args.batches.split(",")]:
                x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
                feeds = {"input": x, contract.TARGET: np.full(batch, -1, dtype=np.int64)}
                runs = {k: (lambda s=s, t=t: s.run(None, feeds if t else {"input": x})) for k, (s, t) in sessions.items()}
                for run in runs.values():
                    run()
                times: dict[str, list[float]] = {k: [] for k in runs}
                for _ in range(args.rounds):
                    for k, run in runs.items():
                        t0 = time.perf_counter()
                        run()
                        times[k].append(time.perf_counter() - t0)
                med = {k: statistics.median(v) for k, v in times.items()}
                forward = med["forward"]
                print(f"{spec}, batch {batch}: " + ", ".join(f"{k} {1000 * v:.1f} ms ({v / forward:.2f} x)" for k, v in med.items()))


if __name__ == "__main__":
    main()
