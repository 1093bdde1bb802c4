"""``onnx-explain serve`` under load, beside the in-process ``Explainer`` loop, in one run.

Starts the server (the real command, a child process) on 127.0.0.1, drives C concurrent
clients (C = 1, 4, 16 by default; each a keep-alive HTTP connection in a thread) through
a bounded number of KServe v1 ``:explain`` requests, one base64 photo each (scikit-image's
photos, round robin), and prints per C: throughput (images/s), p50/p95/p99 latency,
errors and the server's RSS.  In the same run, the in-process loop: ``Explainer.explain``
on the same photos, one per call, on the same ONNX Runtime threads.

Targets (issue 10): at C = 16 throughput >= 0.8 x the in-process loop, 0 errors, RSS
growth < 10 % over the requests (2,000 by default; RSS measured after a warm-up burst at
the highest C, so that ONNX Runtime's arena already holds its largest batch).

    python benchmarks/bench_serve.py                        # EfficientNet-Lite0, 2,000 requests per C
    python benchmarks/bench_serve.py --requests 200         # a quick run
    python benchmarks/bench_serve.py --model m.explain.onnx --method gradcam++ --concurrency 1,8
    python benchmarks/bench_serve.py --sweep --requests 600 # batching against none: the defaults' origin

``--sweep`` runs C = 16 (only) against several server settings: no batching (one image per
model call; one worker with both threads, or two workers with one thread each) and
batches of 4/8/16 gathered for 2-10 ms.  Every load stays on the loopback interface, is
bounded in count, and ends by itself.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


def photos() -> list[Path]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("scikit-image (its photos) is needed: pip install scikit-image")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [folder / p for p in PHOTOS if (folder / p).is_file()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class Server:
    """``onnx-explain serve`` in a child process, on 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, model: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "onnx_explain.command.cli", "serve", str(model), "--name", "bench",
               "--port", str(self.port), "--device", "cpu", *args]
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {log}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("server not ready within 120 s")
            time.sleep(0.1)

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def drive(port: int, bodies: list[bytes], concurrency: int, requests: int, timeout: float = 120.0) -> dict:
    """``requests`` POSTs spread over ``concurrency`` keep-alive connections."""
    path = "/v1/models/bench:explain"
    counter = iter(range(requests))
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            for i in counter:  # next() on a shared iterator: each request index once
                body = bodies[i % len(bodies)]
                start = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    if r.status != 200:
                        errors.append(f"{r.status} {data[:120]!r}")
                    elif b'"explanations"' not in data:
                        errors.append("200 without explanations")
                except OSError as err:
                    errors.append(f"{type(err).__name__}: {err}")
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
                latencies.append(time.perf_counter() - start)
        finally:
            conn.close()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "images_s": len(latencies) / wall, "p50": q[49] * 1e3, "p95": q[94] * 1e3,
            "p99": q[98] * 1e3, "errors": len(errors), "first_errors": errors[:3], "seconds": wall}


def in_process(model: Path, images: list[Path], method: str, threads: int, requests: int) -> float:
    from onnx_explain.explainer import Explainer

    with Explainer(model, device="cpu", threads=threads) as ex:
        for p in images:  # warm-up
            ex.explain([p], method=method)
        start = time.perf_counter()
        for i in range(requests):
            ex.explain([images[i % len(images)]], method=method)
        return requests / (time.perf_counter() - start)


def bodies_for(images: list[Path], method: str) -> list[bytes]:
    return [json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}],
                        "parameters": {"method": method}}).encode() for p in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="explain model [EfficientNet-Lite0, exported into a temp folder]")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="ONNX Runtime threads of the in-process loop [the cores]")
    parser.add_argument("--server-args", default="", help="extra `onnx-explain serve` options, e.g. '--workers 2'")
    parser.add_argument("--sweep", action="store_true", help="batching against none, at C = 16")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000:
        parser.error("--requests must be 1..100000")
    levels = [int(c) for c in args.concurrency.split(",")]
    if not all(1 <= c <= 256 for c in levels):
        parser.error("--concurrency: 1..256 clients")

    scratch = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = args.model
    if model is None:
        from onnx_explain.export import export_model

        model = scratch / "efficientnet_lite0.explain.onnx"
        print("exporting EfficientNet-Lite0 ...", flush=True)
        export_model("efficientnet_lite0", model)
    images = photos()
    bodies = bodies_for(images, args.method)
    log = scratch / "server.log"
    print(f"model {model.name}, method {args.method}, {len(images)} photos, ONNX Runtime threads {args.threads}, "
          f"{os.cpu_count()} cores; server log {log}", flush=True)

    if args.sweep:
        sweep(model, bodies, log, args)
        return

    loop = in_process(model, images, args.method, args.threads, args.requests)
    print(f"\nin-process Explainer loop (one image per call, {args.requests} calls): {loop:.1f} images/s\n", flush=True)

    server = Server(model, log, *args.server_args.split())  # the server's defaults unless told
    try:
        drive(server.port, bodies, max(levels), max(50, 4 * max(levels)))  # warm-up burst
        before = server.rss()
        print(f"server RSS after warm-up: {before:.1f} MB")
        print(f"{'C':>3} {'requests':>8} {'images/s':>9} {'x loop':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6} {'RSS MB':>8}")
        results = {}
        for c in levels:
            r = drive(server.port, bodies, c, args.requests)
            r["rss"] = server.rss()
            results[c] = r
            print(f"{c:>3} {r['requests']:>8} {r['images_s']:>9.1f} {r['images_s'] / loop:>7.2f} {r['p50']:>8.1f} "
                  f"{r['p95']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6} {r['rss']:>8.1f}", flush=True)
            for e in r["first_errors"]:
                print(f"    error: {e}")
    finally:
        code = server.stop()
    after = results[max(levels)]["rss"] if results else float("nan")
    growth = (after - before) / before * 100.0
    print(f"server RSS before {before:.1f} MB, after {after:.1f} MB ({growth:+.1f} %); SIGTERM exit status {code}")
    top = results[max(levels)]
    checks = [
        (f"C={max(levels)} throughput >= 0.8 x in-process", top["images_s"] >= 0.8 * loop,
         f"{top['images_s'] / loop:.2f} x"),
        (f"C={max(levels)} no errors", sum(r["errors"] for r in results.values()) == 0,
         f"{sum(r['errors'] for r in results.values())} errors"),
        ("RSS growth < 10 %", growth < 10.0, f"{growth:+.1f} %"),
    ]
    for what, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {value}")


SWEEP = [  # (label, serve options)
    ("no batching, 1 worker x 2 threads", ["--max-batch-size", "1", "--workers", "1", "--threads", "2"]),
    ("no batching, 2 workers x 1 thread", ["--max-batch-size", "1", "--workers", "2", "--threads", "1"]),
    ("batch <= 4, 2 ms, 1 worker x 2 threads", ["--max-batch-size", "4", "--max-delay-ms", "2", "--threads", "2"]),
    ("batch <= 8, 2 ms, 1 worker x 2 threads", ["--max-batch-size", "8", "--max-delay-ms", "2", "--threads", "2"]),
    ("batch <= 8, 10 ms, 1 worker x 2 threads", ["--max-batch-size", "8", "--max-delay-ms", "10", "--threads", "2"]),
    ("batch <= 16, 2 ms, 1 worker x 2 threads", ["--max-batch-size", "16", "--max-delay-ms", "2", "--threads", "2"]),
    ("batch <= 4, 2 ms, 2 workers x 1 thread", ["--max-batch-size", "4", "--max-delay-ms", "2", "--workers", "2",
                                                 "--threads", "1"]),
    ("batch <= 8, 2 ms, 2 workers x 1 thread", ["--max-batch-size", "8", "--max-delay-ms", "2", "--workers", "2",
                                                 "--threads", "1"]),
    ("batch <= 8, 10 ms, 2 workers x 1 thread", ["--max-batch-size", "8", "--max-delay-ms", "10", "--workers", "2",
                                                  "--threads", "1"]),
    ("batch <= 16, 2 ms, 2 workers x 1 thread", ["--max-batch-size", "16", "--max-delay-ms", "2", "--workers", "2",
                                                  "--threads", "1"]),
]


def sweep(model: Path, bodies: list[bytes], log: Path, args: argparse.Namespace) -> None:
    c = 16
    print(f"\nC = {c}, {args.requests} requests per setting (after a warm-up burst)")
    print(f"{'server setting':<42} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'mean batch':>10}")
    for label, options in SWEEP:
        server = Server(model, log, *options)
        try:
            drive(server.port, bodies, c, 4 * c)
            before = _batches(server.port)
            r = drive(server.port, bodies, c, args.requests)
            after = _batches(server.port)
        finally:
            server.stop()
        mean = (after[0] - before[0]) / max(1.0, after[1] - before[1])
        print(f"{label:<42} {r['images_s']:>9.1f} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['p99']:>8.1f} "
              f"{r['errors']:>6} {mean:>10.2f}", flush=True)


def _batches(port: int) -> tuple[float, float]:
    """(images, model calls) so far, from /metrics."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        if line.startswith(("onnx_explain_batch_size_sum", "onnx_explain_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("onnx_explain_batch_size_sum", 0.0), values.get("onnx_explain_batch_size_count", 0.0)


if __name__ == "__main__":
    main()
