"""Why a strided depthwise Conv's input gradient is emitted as a Conv, not a ConvTranspose.

For EfficientNet-Lite0's four strided depthwise layers (channels, output size, kernel), times
the two exact forms of the same input gradient on ONNX Runtime CPU, side by side in one run:

* ``ConvTranspose(dY, W, group=C)``: ONNX Runtime runs one small GEMM per channel;
* what the Conv rule emits: ``dY`` spread onto the input's grid (nearest ``Resize`` times a
  0/1 lattice) and a stride-1 depthwise ``Conv`` with the flipped kernel.

Each variant sits between two 1x1 convolutions, as in the network, so layout changes
around it are paid where they would be; a third graph with only the upsampling between
the 1x1 convolutions is the common floor, subtracted to give the cost of the form itself.

    python benchmarks/bench_strided_depthwise.py [--batch 8] [--threads 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

LAYERS = [(96, 56, 3), (144, 28, 5), (240, 14, 5), (672, 7, 5)]  # channels, dY size, kernel


def _session(nodes, inits: dict, channels: int, size: int, threads: int) -> ort.InferenceSession:
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _graphs(channels: int, size: int, k: int, rng) -> dict:
    pad = k // 2
    weight = rng.standard_normal((channels, 1, k, k)).astype(np.float32)
    mix = (rng.standard_normal((channels, channels, 1, 1)) * 0.1).astype(np.float32)
    scales = np.array([1, 1, 2, 2], dtype=np.float32)
    lattice = np.zeros((1, 1, 2 * size, 2 * size), dtype=np.float32)
    lattice[..., ::2, ::2] = 1
    before = [helper.make_node("Conv", ["x", "mix"], ["dy"])]
    after = [helper.make_node("Conv", ["dx", "mix"], ["out"])]
    upsample = helper.make_node("Resize", ["dy", "", "scales"], ["up"], mode="nearest",
                                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    transpose = helper.make_node("ConvTranspose", ["dy", "w"], ["dx"], kernel_shape=[k, k], strides=[2, 2],
                                 pads=[pad] * 4, output_padding=[1, 1] if k % 2 else [0, 0], group=channels)
    begin = k - 1 - pad
    spread = [upsample, helper.make_node("Mul", ["up", "lattice"], ["zi"]),
              helper.make_node("Conv", ["zi", "w_flipped"], ["dx"], kernel_shape=[k, k],
                               pads=[begin, begin, k - 1 - begin, k - 1 - begin], group=channels)]
    floor = [helper.make_node("Resize", ["dy", "", "scales"], ["dx"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")]
    return {
        "ConvTranspose": (before + [transpose] + after, {"mix": mix, "w": weight}),
        "spread + Conv": (before + spread + after,
                          {"mix": mix, "w_flipped": weight[:, :, ::-1, ::-1].copy(), "lattice": lattice, "scales": scales}),
        "floor": (before + floor + after, {"mix": mix, "scales": scales}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, batch {args.batch}, median of {args.rounds} interleaved rounds")
    for channels, size, k in LAYERS:
        sessions = {name: _session(nodes, inits, channels, size, args.threads)
                    for name, (nodes, inits) in _graphs(channels, size, k, rng).items()}
        x = rng.standard_normal((args.batch, channels, size, size)).astype(np.float32)
        results = {name: s.run(None, {"x": x})[0] for name, s in sessions.items()}
        err = np.abs(results["ConvTranspose"] - results["spread + Conv"]).max() / np.abs(results["ConvTranspose"]).max()
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"x": x})
                times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(v) * 1000 for name, v in times.items()}
        ct, sp = med["ConvTranspose"] - med["floor"], med["spread + Conv"] - med["floor"]
        print(f"  {channels:4d} ch, {size:3d} -> {2 * size:3d}, {k}x{k}: ConvTranspose {ct:6.2f} ms, "
              f"spread + Conv {sp:6.2f} ms ({ct / max(sp, 1e-6):.1f}x faster); max rel. difference {err:.1e}")


if __name__ == "__main__":
    main()
