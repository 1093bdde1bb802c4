"""Peak memory of `onnx-explain explain` and `score` against the number of images.

Images are decoded batch by batch, so the peak resident memory must not grow with the
number of inputs: 200 photos should peak where 20 do.  This runs each command in a child
process on 20, 200 (and with --full 2,000) synthetic camera-sized photos and prints the
children's peak RSS side by side, as each child reads it from its own address space at
exit (``VmHWM``; ``wait4``'s ``ru_maxrss`` would report this script's own peak for a child
started with vfork, whatever the child used).

    python benchmarks/bench_memory.py                 # 20 and 200 photos of 2400x1600
    python benchmarks/bench_memory.py --full          # and 2,000 (several minutes)
    python benchmarks/bench_memory.py --model m.onnx  # an explain model of your own

The default model is a small CNN built here with onnx.helper and augmented (no torch,
no download), so the numbers show the runtime's own memory rather than a network's.
The photos are written once into a temporary folder (a few distinct smooth images,
hard-linked under many names: every name is decoded on its own).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLI = """import atexit, os, sys
def peak():
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open(os.environ["ONNX_EXPLAIN_PEAK_FILE"], "w").write(hwm.split()[1])
atexit.register(peak)
from onnx_explain.command.cli import main
sys.exit(main(sys.argv[1:]))
"""


def build_model(path: Path, size: int = 224, classes: int = 10) -> Path:
    """Conv-ReLU x2, global average pool, linear head: an explain model with no torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_explain.augment import augment_model
    from onnx_explain.contract import Preprocess

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.5, (classes, 16)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bench_memory",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    explain = augment_model(plain, preprocess=Preprocess(size=(size, size)),
                            labels=[f"class {i}" for i in range(classes)])
    onnx.save(explain, str(path))
    return path


def write_photos(folder: Path, n: int, width: int, height: int, distinct: int = 10) -> None:
    """``n`` JPEG photos of ``width`` x ``height``: smooth colour fields with edges (they
    compress like photos), ``distinct`` of them, the rest hard links under their own names."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    originals = []
    for k in range(min(distinct, n)):
        small = rng.integers(0, 256, (12, 18, 3), np.uint8)
        img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        cv2.circle(img, (width // 3, height // 2), height // 4, (int(k * 25) % 256, 200, 40), -1)
        p = folder / f"photo{k:05d}.jpg"
        assert cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        originals.append(p)
    for i in range(len(originals), n):
        os.link(originals[i % len(originals)], folder / f"photo{i:05d}.jpg")


def peak_rss(args: list[str]) -> tuple[float, float, int, str]:
    """(peak RSS in MB, seconds, exit status, stderr tail) of one CLI run in a child."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak")
        proc = subprocess.run([sys.executable, "-c", CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "ONNX_EXPLAIN_PEAK_FILE": peak_file})
        seconds = time.perf_counter() - t0
        peak_kb = float(Path(peak_file).read_text()) if os.path.exists(peak_file) else float("nan")
    return peak_kb / 1024, seconds, proc.returncode, proc.stderr.decode(errors="replace")[-500:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="also 2,000 photos (several minutes)")
    ap.add_argument("--counts", default="20,200", help="numbers of photos [20,200]")
    ap.add_argument("--width", type=int, default=2400)
    ap.add_argument("--height", type=int, default=1600)
    ap.add_argument("--model", help="an explain model [a small CNN built here]")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="gradcam")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")] + ([2000] if args.full else [])

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else build_model(tmp / "model.onnx")
        common = ["--device", "cpu", "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
        print(f"model {model.name if args.model else 'small CNN (built here)'}, {args.width}x{args.height} JPEG "
              f"photos, batch {args.batch_size}, {args.threads} threads, method {args.method}; peak RSS of the "
              "child process (its VmHWM)")
        print(f"{'images':>7} | {'explain peak RSS':>18} | {'score peak RSS':>18} | {'explain time':>12} | "
              f"{'score time':>10}")
        print(f"{'-' * 7}-+-{'-' * 18}-+-{'-' * 18}-+-{'-' * 12}-+-{'-' * 10}")
        base = {}
        for n in counts:
            folder = tmp / f"photos{n}"
            write_photos(folder, n, args.width, args.height)
            out = tmp / f"out{n}"
            e_mb, e_s, e_rc, e_err = peak_rss(["explain", str(model), str(folder), "--out", str(out), "--no-npy",
                                               "-m", args.method, *common])
            s_mb, s_s, s_rc, s_err = peak_rss(["score", str(model), str(folder), *common])
            for rc, err in ((e_rc, e_err), (s_rc, s_err)):
                if rc != 0:
                    sys.exit(f"a run failed (exit {rc}): {err}")
            base.setdefault("explain", e_mb)
            base.setdefault("score", s_mb)
            print(f"{n:>7} | {e_mb:>7.0f} MB ({e_mb / base['explain']:.2f}x) | {s_mb:>7.0f} MB ({s_mb / base['score']:.2f}x)"
                  f" | {e_s:>10.1f} s | {s_s:>8.1f} s", flush=True)
            for f in out.iterdir():
                f.unlink()
            for f in folder.iterdir():
                f.unlink()


if __name__ == "__main__":
    main()
