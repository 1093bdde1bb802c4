"""What a consumer that cannot prune pays: plain ``onnxruntime.InferenceSession``, one run.

ONNX Runtime (and onnxruntime-web, -node, -mobile, Triton's ONNX Runtime backend) runs
every node of a graph, whatever outputs a call asks for.  For EfficientNet-Lite0 and
ResNet-50 at batch 1 and 8, this times side by side, with nothing of onnx-explain in the
timed calls (the files are built first, then only ``InferenceSession.run``):

* ``forward``: the plain model;
* ``lean``: the lean Grad-CAM file (``--outputs gradcam``), asked for ``gradcam``;
* ``on-demand``: the full file as ``export`` / ``augment`` write it (the input gradients
  behind flag inputs, their branch recomputing the forward), asked for ``gradcam``;
* ``ungated``: the full file with everything in the main graph (``--always``), asked for
  ``gradcam``: every node runs anyway;
* ``outer``: the rejected form of the flag: the branch reads the main graph's forward
  values instead of recomputing them, asked for ``gradcam``;
* the input gradient (``gradcam`` + ``grad_input``, its flag fed true) from the on-demand
  and the outer form.

Timings are interleaved (one round runs every variant once, each round starting one
variant later), the median of the rounds is reported; compare ratios within one run.  Also
the memory a process holding each file's session takes (the on-demand file's branches get
their own copies of the weights in ONNX Runtime's layout).  The check: the lean file and a Grad-CAM request
to the on-demand file cost at most 1.10 x the forward.

    python benchmarks/bench_consumers.py                        # both models, batch 1 and 8
    python benchmarks/bench_consumers.py --models resnet50 --batches 8 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain.augment import augment_model
from onnx_explain.export import export_plain, translate_layer
from onnx_explain.gates import gate_outputs
from onnx_explain.models import DEFAULT_LAYERS

TARGET = 1.10  # Grad-CAM request / forward, for the lean file and the on-demand full file
FULL = dict(input_gradients=True, guided=True, gradcam=True)


def build(name: str, size: int) -> dict[str, bytes]:
    """The files, serialized: plain, lean, on-demand, ungated, outer."""
    plain = export_plain(name, None, input_size=size)
    layer = translate_layer(plain.model, plain.module, DEFAULT_LAYERS[name]) if name in DEFAULT_LAYERS else None
    ungated = augment_model(plain.model, layer=layer, **FULL)
    files = {
        "forward": plain.model,
        "lean": augment_model(plain.model, layer=layer, outputs=["gradcam"]),
        "on-demand": augment_model(plain.model, layer=layer, **FULL, on_demand=True),
        "ungated": ungated,
        "outer": gate_outputs(ungated, ["grad_input", "guided_grad_input"], recompute=False),
    }
    return {k: v.SerializeToString() for k, v in files.items()}


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # several sessions share the cores: no thread may spin-wait after its run
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


_RSS_CHILD = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[2]); so.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.zeros([1] + [d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape[1:]], np.float32)
feeds = {s.get_inputs()[0].name: x}
if any(i.name == "target" for i in s.get_inputs()):
    feeds["target"] = np.array([-1], np.int64)
s.run(None, feeds)
print(int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024)
"""


def session_memory(files: dict[str, bytes], threads: int) -> dict[str, int]:
    """Resident memory (MB) of a fresh process holding a session of each file after one
    run at batch 1 (Linux /proc): what the device must hold."""
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for key, data in files.items():
            path = Path(folder) / "model.onnx"
            path.write_bytes(data)
            run = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(threads)], capture_output=True,
                                 text=True, timeout=600)
            out[key] = int(run.stdout.split()[-1]) if run.returncode == 0 and run.stdout.split() else -1
    return out


def timed_rounds(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(rounds):  # each round starts one variant later: none always follows the same one
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, batches: list[int], rounds: int, threads: int, size: int, memory: bool) -> tuple[list[str], bool]:
    t0 = time.perf_counter()
    files = build(name, size)
    lines = [f"{name}: files built in {time.perf_counter() - t0:.1f} s; sizes (MB) "
             + ", ".join(f"{k} {len(v) / 1e6:.1f}" for k, v in files.items())]
    if memory and Path("/proc/self/status").exists():
        rss = session_memory(files, threads)
        lines.append("  memory of a process holding the session (MB, after one run at batch 1): "
                     + ", ".join(f"{k} {v}" for k, v in rss.items()))
    s = {k: session(v, threads) for k, v in files.items()}
    image = s["forward"].get_inputs()[0].name
    ok = True
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        t = np.full(batch, -1, np.int64)
        feeds = {image: x, "target": t}
        on = {**feeds, "compute_grad_input": np.array(True)}
        # the same numbers whichever file: a benchmark of wrong outputs would be worthless
        ref = s["ungated"].run(["gradcam", "grad_input"], feeds)
        for key, f in (("lean", feeds), ("on-demand", feeds), ("outer", feeds)):
            np.testing.assert_allclose(s[key].run(["gradcam"], f)[0], ref[0], atol=1e-5, err_msg=key)
        for key in ("on-demand", "outer"):
            got = s[key].run(["grad_input"], on)[0]
            assert np.linalg.norm(got - ref[1]) <= 1e-5 * np.linalg.norm(ref[1]), key
        fns = {
            "forward": lambda: s["forward"].run(None, {image: x}),
            "lean": lambda: s["lean"].run(["gradcam"], feeds),
            "on-demand": lambda: s["on-demand"].run(["gradcam"], feeds),
            "ungated": lambda: s["ungated"].run(["gradcam"], feeds),
            "outer": lambda: s["outer"].run(["gradcam"], feeds),
            "on-demand + grad_input": lambda: s["on-demand"].run(["gradcam", "grad_input"], on),
            "outer + grad_input": lambda: s["outer"].run(["gradcam", "grad_input"], on),
        }
        med = timed_rounds(fns, rounds * 4 if batch == 1 else rounds)
        f = med["forward"]
        cells = [f"{k} {1000 * v:.1f} ms ({v / f:.2f} x)" for k, v in med.items() if k != "forward"]
        checks = {k: med[k] / f for k in ("lean", "on-demand")}
        verdict = all(v <= TARGET for v in checks.values())
        ok &= verdict
        lines.append(f"  batch {batch}: forward {1000 * f:.1f} ms | " + " | ".join(cells))
        lines.append(f"    Grad-CAM request <= {TARGET:.2f} x forward: lean {checks['lean']:.2f} x, "
                     f"on-demand full file {checks['on-demand']:.2f} x -> {'PASS' if verdict else 'FAIL'}")
    return lines, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0,resnet50")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=15, help="rounds at batch > 1 (4 x as many at batch 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-memory", action="store_true", help="skip the session memory of each file")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"onnxruntime {ort.__version__}, CPU, {args.threads} threads, {args.size} x {args.size}, "
          f"median of interleaved rounds", flush=True)
    all_ok = True
    for name in args.models.split(","):
        lines, ok = bench(name, batches, args.rounds, args.threads, args.size, not args.no_memory)
        all_ok &= ok
        print("\n".join(lines), flush=True)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
