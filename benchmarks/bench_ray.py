"""The same folder explained by the plain command line and by ``--ray``, on this machine.

    python benchmarks/bench_ray.py                      # EfficientNet-Lite0, 24 and 96 images
    python benchmarks/bench_ray.py --model m.explain.onnx --sizes 24,96,384 --actors 1,2

For each folder size: images/s of ``onnx-explain explain`` (one process, its own
batching), and of ``onnx-explain explain --ray`` on a local cluster (127.0.0.1), split
into Ray's start-up (``ray.init``) and the job itself; and, with ``--serve``, requests/s
of the KServe v1 ``:explain`` route served plainly and on Ray Serve.  Every server and
cluster is on 127.0.0.1 and stopped at the end.  Output: one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png")


def photos() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [folder / p for p in PHOTOS]


def make_folder(root: Path, n: int) -> Path:
    """``n`` photos: the three of scikit-image at varied sizes (each decode is real work)."""
    import cv2

    folder = root / f"images-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    src = [cv2.imread(str(p)) for p in photos()]
    for i in range(n):
        img = src[i % len(src)]
        scale = 0.6 + 0.4 * ((i * 7) % 10) / 10
        cv2.imwrite(str(folder / f"img{i:05d}.jpg"),
                    cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    return folder


def plain(model: Path, folder: Path, out: Path, threads: int | None) -> float:
    args = [sys.executable, "-m", "onnx_explain.command.cli", "explain", str(model), str(folder), "--out", str(out),
            "--json", "--device", "cpu", "--no-npy"]
    if threads:
        args += ["--threads", str(threads)]
    t = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, timeout=3600, cwd=REPO)
    return time.perf_counter() - t


def ray_job(model: Path, folder: Path, out: Path, actors: int) -> dict:
    """In a child process (a fresh cluster each time): start-up and job seconds."""
    code = f"""
import json, time
from onnx_explain import ray_batch
t = time.perf_counter(); ray_batch.init_ray()
startup = time.perf_counter() - t
s = ray_batch.explain_dataset({str(model)!r}, [{str(folder)!r}], {str(out)!r}, actors={actors}, progress=False)
import ray; ray.shutdown()
print(json.dumps({{"startup_s": startup, "job_s": s.seconds, "explained": s.explained, "failed": s.failed}}))
"""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=3600,
                       cwd=REPO)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    doc["process_s"] = time.perf_counter() - t
    return doc


def serve_bench(model: Path, requests: int, concurrency: int, replicas: int) -> list[dict]:
    import base64
    import concurrent.futures as cf
    import dataclasses

    import cv2
    import httpx

    sys.path.insert(0, str(REPO / "tests"))
    from serving import config, free_port, running

    img = cv2.imread(str(photos()[0]))
    ok, data = cv2.imencode(".jpg", cv2.resize(img, (320, 240)))
    body = {"instances": [{"b64": base64.b64encode(data.tobytes()).decode()}], "parameters": {"method": "gradcam"}}
    name = "m"

    def drive(url: str) -> float:
        with httpx.Client(base_url=url, timeout=120) as c:
            assert c.post(f"/v1/models/{name}:explain", json=body).status_code == 200  # warm
            t = time.perf_counter()
            with cf.ThreadPoolExecutor(concurrency) as pool:
                codes = list(pool.map(lambda _: c.post(f"/v1/models/{name}:explain", json=body).status_code,
                                      range(requests)))
            assert set(codes) == {200}, codes
            return requests / (time.perf_counter() - t)

    out = []
    cfg = config(model, name=name, threads=None)
    with running(cfg) as srv:
        out.append({"serve": "plain (uvicorn, app's batcher)", "requests_per_s": round(drive(srv.url), 2)})
    from onnx_explain import ray_batch, ray_serve

    ray_batch.init_ray()
    try:
        from ray import serve

        for n in replicas_list(replicas):
            port = free_port()
            url = ray_serve.deploy(dataclasses.replace(cfg, port=port, workers=max(1, 2 // n)), replicas=n,
                                   replica_cpus=min(1.0, 1.6 / n), connect=False)
            deadline = time.monotonic() + 120
            while httpx.get(url + "/v2/health/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            out.append({"serve": f"Ray Serve, {n} replica(s), app's batcher", "requests_per_s": round(drive(url), 2)})
            serve.shutdown()
        # the alternative: Ray Serve's own batching (@serve.batch) around one Explainer per replica,
        # the same :explain URL and body (answer: class, label, probability, box only)
        for n in replicas_list(replicas):
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(serve_batch_app(model, n, name), name="batch", route_prefix="/", blocking=False)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.post(f"{url}/v1/models/{name}:explain", json=body, timeout=30).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.3)
            out.append({"serve": f"Ray Serve, {n} replica(s), @serve.batch(max_batch_size=8, 2 ms)",
                        "requests_per_s": round(drive(url), 2)})
            serve.shutdown()
    finally:
        import ray

        ray.shutdown()
    return out


def serve_batch_app(model: Path, replicas: int, name: str):
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": min(1.0, 1.6 / replicas)},
                      max_ongoing_requests=64)
    class Batched:
        def __init__(self) -> None:
            import os

            from onnx_explain.explainer import Explainer
            from onnx_explain.serve.decode import ImageDecoder

            os.environ.setdefault("OMP_NUM_THREADS", "1")
            self.ex = Explainer(str(model), device="cpu", threads=max(1, 2 // replicas))
            self.decoder = ImageDecoder()

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
        async def explain(self, images: list) -> list:
            return [{"class": e.target_class, "label": e.label, "probability": e.probability,
                     "box": None if e.box is None else list(e.box)}
                    for e in self.ex.explain(images, method="gradcam", batch_size=8)]

        async def __call__(self, request: Request):
            import base64

            doc = await request.json()
            image = self.decoder.decode(base64.b64decode(doc["instances"][0]["b64"]))
            return JSONResponse({"explanations": [await self.explain(image)]})

    return Batched.bind()


def replicas_list(n: int) -> list[int]:
    return sorted({1, n})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="explain model [EfficientNet-Lite0, exported into a temp folder]")
    p.add_argument("--sizes", default="24,96", help="folder sizes (images)")
    p.add_argument("--actors", default="2", help="actor counts for --ray")
    p.add_argument("--serve", action="store_true", help="also measure the HTTP service, plain and on Ray Serve")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--replicas", type=int, default=2)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        model = args.model
        if model is None:
            from onnx_explain.export import export_model

            model = scratch / "efficientnet_lite0.explain.onnx"
            export_model("efficientnet_lite0", model)
        for n in [int(x) for x in args.sizes.split(",") if x]:
            folder = make_folder(scratch, n)
            secs = plain(model, folder, scratch / f"plain-{n}", None)
            print(json.dumps({"images": n, "runner": "plain CLI", "seconds": round(secs, 2),
                              "images_per_s": round(n / secs, 2)}), flush=True)
            for a in [int(x) for x in args.actors.split(",")]:
                d = ray_job(model, folder, scratch / f"ray-{n}-{a}", a)
                assert d["explained"] == n and d["failed"] == 0, d
                print(json.dumps({"images": n, "runner": f"--ray, {a} actor(s)", "seconds": round(d["process_s"], 2),
                                  "ray_startup_s": round(d["startup_s"], 2), "job_s": round(d["job_s"], 2),
                                  "images_per_s": round(n / d["process_s"], 2),
                                  "images_per_s_after_startup": round(n / d["job_s"], 2)}), flush=True)
        if args.serve:
            for row in serve_bench(model, args.requests, args.concurrency, args.replicas):
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
