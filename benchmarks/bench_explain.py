"""Explaining costs about as much as predicting: measured side by side, in one run.

For each model and batch size, on ONNX Runtime CPU with a fixed thread count at 224x224:

* the plain model's forward;
* the explain model asked for ``activations`` + ``grad_activations`` (Grad-CAM's inputs);
* the explain model asked for ``grad_input`` as well (saliency's input);

and the same work the PyTorch way, on the same threads: forward, autograd to the layer,
Captum's LayerGradCam and Saliency.  Timings are interleaved (one round runs every
variant once) and the median of the rounds is reported, so a background load affects
all columns alike.  Also: export + augment time and the file sizes.

    python benchmarks/bench_explain.py       # resnet50, efficientnet_lite0, mobilenet_v3_small; batch 1, 8
    python benchmarks/bench_explain.py --models resnet50 --batches 8 --rounds 5
    python benchmarks/bench_explain.py --models mobilenet_v3_small,mobilenet_v3_small@torchscript

``NAME@torchscript`` exports with the TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``, what most ONNX files in the wild come from) instead of the dynamo one.
"""

from __future__ import annotations

import os

# torch's OpenMP threads must not spin-wait between calls either (set before importing it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from onnx_explain import contract
from onnx_explain.export import export_model, export_plain
from onnx_explain.models import DEFAULT_LAYERS
from onnx_explain.session import ExplainSession



def _layer(module: torch.nn.Module, path: str) -> torch.nn.Module:
    return dict(module.named_modules())[path]


def _timed_rounds(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# Input gradient / forward at which the benchmark calls a model's explain run cheap (by
# NAME or NAME@exporter; 2.5 otherwise).
TARGETS = {"mobilenet_v3_small": 3.0, "mobilenet_v3_small@torchscript": 3.0, "efficientnet_lite0@torchscript": 3.0}


def bench_model(spec: str, batches: list[int], rounds: int, threads: int, folder: Path) -> list[str]:
    name, _, exporter = spec.partition("@")
    if exporter not in ("", "dynamo", "torchscript"):
        raise SystemExit(f"{spec}: unknown exporter {exporter!r} (dynamo or torchscript)")
    dynamo = exporter != "torchscript"
    lines = []
    stem = spec.replace("@", ".")
    plain_path, explain_path = folder / f"{stem}.onnx", folder / f"{stem}.explain.onnx"
    t0 = time.perf_counter()
    try:
        export_model(name, explain_path, input_size=224, layer=DEFAULT_LAYERS[name], dynamo=dynamo)
    except Exception as e:  # noqa: BLE001  (report and go on with the other models)
        return [f"{spec}: export + augment failed: {type(e).__name__}: {e}"]
    export_seconds = time.perf_counter() - t0
    plain = export_plain(name, plain_path, input_size=224, dynamo=dynamo)
    size_ratio = explain_path.stat().st_size / plain_path.stat().st_size
    lines.append(f"{spec}: export + augment {export_seconds:.1f} s; file {plain_path.stat().st_size / 1e6:.1f} MB plain, "
                 f"{explain_path.stat().st_size / 1e6:.1f} MB explain ({size_ratio:.4f} x)")

    # Several sessions and torch share the cores: no thread may spin-wait after its run
    # and steal time from the next measurement.
    no_spin = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for k, v in no_spin.items():
        options.add_session_config_entry(k, v)
    plain_session = ort.InferenceSession(str(plain_path), options, providers=["CPUExecutionProvider"])
    explain = ExplainSession(explain_path, device="cpu", threads=threads, session_config=no_spin)
    cam_outputs = [contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS, "logits"]
    input_outputs = cam_outputs + [contract.GRAD_INPUT]

    torch.set_num_threads(threads)
    module = plain.module.eval()
    layer = _layer(module, DEFAULT_LAYERS[name])  # the layer the explain model was built for
    from captum.attr import LayerGradCam, Saliency

    layer_gradcam, saliency = LayerGradCam(module, layer), Saliency(module)

    def torch_layer_grads(x):
        store = {}
        hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
        try:
            logits = module(x)
            top = logits.argmax(1)
            a = store["a"]
            torch.autograd.grad(logits.gather(1, top[:, None]).sum(), a)
        finally:
            hook.remove()

    for batch in batches:
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        target = np.full(batch, -1, dtype=np.int64)
        with torch.no_grad():
            top = module(xt).argmax(1)

        def torch_forward():
            with torch.no_grad():
                module(xt)

        fns = {
            "ort_forward": lambda: plain_session.run(None, {"input": x}),
            "ort_gradcam_inputs": lambda: explain(x, target, cam_outputs),
            "ort_with_grad_input": lambda: explain(x, target, input_outputs),
            "torch_forward": torch_forward,
            "torch_autograd_layer": lambda: torch_layer_grads(xt),
            "captum_layergradcam": lambda: layer_gradcam.attribute(xt, target=top),
            "captum_saliency": lambda: saliency.attribute(xt.clone().requires_grad_(True), target=top),
        }
        med = _timed_rounds(fns, rounds * 4 if batch == 1 else rounds)  # batch 1 is cheap: steadier medians
        f = med["ort_forward"]
        lines.append(f"  batch {batch}: ORT forward {1000 * f:.1f} ms")
        for key in ("ort_gradcam_inputs", "ort_with_grad_input", "torch_forward", "torch_autograd_layer",
                    "captum_layergradcam", "captum_saliency"):
            lines.append(f"    {key:<22} {1000 * med[key]:9.1f} ms   {med[key] / f:5.2f} x ORT forward")
        lines.append(f"    ratio activations+grad_activations / forward: {med['ort_gradcam_inputs'] / f:.2f} (target <= 1.10)")
        target = TARGETS.get(spec, TARGETS.get(name, 2.5))
        lines.append(f"    ratio + grad_input / forward:                 {med['ort_with_grad_input'] / f:.2f} (target <= {target:.2f})")
        lines.append(f"    Captum LayerGradCam / our Grad-CAM inputs:    {med['captum_layergradcam'] / med['ort_gradcam_inputs']:.2f}")
        lines.append(f"    Captum Saliency / our input gradient:         {med['captum_saliency'] / med['ort_with_grad_input']:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,efficientnet_lite0,mobilenet_v3_small",
                        help="comma-separated built-in names, each optionally NAME@torchscript")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, {args.threads} threads, 224x224, "
          f"median of {args.rounds} interleaved rounds ({4 * args.rounds} at batch 1)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for line in bench_model(name.strip(), [int(b) for b in args.batches.split(",")], args.rounds, args.threads, Path(tmp)):
                print(line, flush=True)


if __name__ == "__main__":
    main()
