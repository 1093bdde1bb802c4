"""Ray: batch explaining (Ray Data + actor pool -> Parquet) and the HTTP service on Ray
Serve, on one local cluster bound to 127.0.0.1 (checked), 2 CPUs, every call bounded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("ray.serve")

from onnx_explain import ray_batch  # noqa: E402
from onnx_explain.explainer import Explainer, ItemError  # noqa: E402
from serving import b64, config, running  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CALL_TIMEOUT = 120.0
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
BAD = {"broken.jpg": b"not an image at all", "empty.png": b"", "text.png": b"GIF89a? no, plain text"}


def bounded(fn, *args, timeout: float = CALL_TIMEOUT, **kwargs):
    """``fn(*args, **kwargs)`` or a failed test after ``timeout`` s (a hung Ray call)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def cluster():
    # in the main thread (Ray's own start-up and shut-down have their own time limits)
    ctx = ray_batch.init_ray(num_cpus=2, object_store_memory=200 << 20)
    try:
        yield ctx
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos) -> Path:
    """The three photos (made smaller: fast) and bad files with image extensions."""
    import cv2

    root = tmp_path_factory.mktemp("rayphotos")
    for p in photos:
        img = cv2.imread(str(p))
        cv2.imwrite(str(root / p.name), cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA))
    for name, data in BAD.items():
        (root / name).write_bytes(data)
    (root / "cut.png").write_bytes((root / photos[1].name).read_bytes()[:400])
    return root


def _ray_pids() -> list[int]:
    import psutil

    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    pids = {p.pid for p in psutil.Process().children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        if any(session in a for a in (p.info["cmdline"] or [])):
            pids.add(p.pid)
    return sorted(pids | {os.getpid()})


def listening(pids) -> list[tuple[int, str, int]]:
    import psutil

    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # TCP listen, or bound UDP
                out.append((pid, c.laddr.ip, c.laddr.port))
    return out


def assert_loopback_only() -> int:
    socks = listening(_ray_pids())
    outside = [s for s in socks if s[1] not in LOOPBACK_ADDRESSES]
    assert not outside, f"Ray sockets not on loopback: {outside}"
    return len(socks)


# ----------------------------------------------------------------------------- batch


def test_cluster_listens_on_loopback_only(cluster):
    n = assert_loopback_only()
    assert n >= 5  # GCS, raylet (2), agents: the check saw the cluster's sockets


def _plain_cli(model: Path, folder: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "onnx_explain.command.cli", "explain", str(model), str(folder),
                        "--out", str(out), "--json", "--device", "cpu", "--threads", "1"],
                       capture_output=True, text=True, timeout=CALL_TIMEOUT, cwd=REPO)
    assert r.returncode == 1, r.stderr  # some inputs failed
    return json.loads((out / "report.json").read_text())


def test_cli_ray_equals_plain_cli_and_explainer(cluster, tiny, folder, tmp_path):
    out = tmp_path / "ray"
    address = cluster.address_info["gcs_address"]
    r = subprocess.run([sys.executable, "-m", "onnx_explain.command.cli", "explain", str(tiny.explain),
                        str(folder), "--ray", "--ray-address", address, "--actors", "2", "--out", str(out),
                        "--json", "--batch-size", "2"],
                       capture_output=True, text=True, timeout=CALL_TIMEOUT, cwd=REPO)
    assert r.returncode == 1, r.stderr  # bad files: a row each, exit 1 as the plain CLI
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert (summary["images"], summary["explained"], summary["failed"]) == (7, 7, 4)
    rows = {Path(x["file"]).name: x for x in ray_batch.read_results(out).to_pylist()}
    assert sorted(rows) == sorted([*BAD, "cut.png", "chelsea.png", "coffee.png", "astronaut.png"])

    plain = _plain_cli(tiny.explain, folder, tmp_path / "plain")
    plain_results = {Path(x["file"]).name: x for x in plain["results"]}
    plain_errors = {Path(x["file"]).name for x in plain["errors"]}
    assert {n for n, x in rows.items() if x["error"]} == plain_errors == {*BAD, "cut.png"}
    for name in BAD:
        assert name in rows[name]["error"] and rows[name]["class"] is None

    good = sorted(plain_results)
    assert good == ["astronaut.png", "chelsea.png", "coffee.png"]
    with Explainer(tiny.explain, device="cpu", threads=1) as ex:
        want = ex.explain([folder / n for n in good], errors="return")
    for name, w in zip(good, want):
        assert not isinstance(w, ItemError)
        got, p = rows[name], plain_results[name]
        assert got["error"] is None
        assert got["class"] == p["class"] == w.target_class and got["label"] == p["label"]
        np.testing.assert_allclose(got["probability"], p["probability"], rtol=1e-6)
        assert [round(v, 2) for v in got["box"]] == p["box"]
        m = np.asarray(got["map"], np.float32).reshape(got["map_shape"])
        np.testing.assert_allclose(m, w.raw_map, rtol=1e-5, atol=1e-6)
        assert Path(got["overlay"]).is_file() and got["explain_s"] > 0
    assert assert_loopback_only() >= 5

    # run again: everything is in the parts, nothing redone, no cluster started
    again = subprocess.run([sys.executable, "-m", "onnx_explain.command.cli", "explain", str(tiny.explain),
                            str(folder), "--ray", "--out", str(out), "--json"],
                           capture_output=True, text=True, timeout=CALL_TIMEOUT, cwd=REPO)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout[again.stdout.index("{"):])
    assert (doc["skipped"], doc["explained"], doc["ray_startup_s"]) == (7, 0, 0.0)
    assert len(ray_batch.read_results(out)) == 7


def test_interrupted_run_restarts_without_loss_or_repeat(cluster, tiny, folder, tmp_path):
    out = tmp_path / "job"
    opts = ray_batch.ExplainOptions(batch_size=2)
    run = lambda **kw: bounded(ray_batch.explain_dataset, tiny.explain, [str(folder)], out, options=opts,  # noqa: E731
                               actors=2, chunk_size=3, progress=False, **kw)
    first = run(max_parts=1)  # the job stops after its first part, as a killed one would
    assert (first.explained, first.parts) == (3, 1)
    (part,) = (out / "parts").glob("part-*.parquet")
    before = part.stat().st_mtime_ns
    (out / "parts" / ".tmp-half-written").write_bytes(b"PAR1 cut short")  # killed while writing
    second = run()
    assert (second.skipped, second.explained, second.parts) == (3, 4, 2)
    assert part.stat().st_mtime_ns == before  # not redone
    assert not list((out / "parts").glob(".tmp-*"))
    files = ray_batch.read_results(out).column("file").to_pylist()
    assert sorted(files) == sorted(str(p) for p in folder.iterdir()) and len(files) == len(set(files)) == 7
    third = run()
    assert (third.skipped, third.explained) == (7, 0)
    # a lost part is redone, and only it
    import pyarrow.parquet as pq

    victim = sorted((out / "parts").glob("part-*.parquet"))[0]
    lost = pq.read_table(victim).num_rows
    victim.unlink()
    fourth = run()
    assert (fourth.skipped, fourth.explained) == (7 - lost, lost) and lost > 0
    files = ray_batch.read_results(out).column("file").to_pylist()
    assert sorted(files) == sorted(str(p) for p in folder.iterdir()) and len(files) == 7


def test_dataset_api_reads_a_ray_dataset(cluster, tiny, folder, tmp_path):
    paths = sorted(str(folder / n) for n in ("chelsea.png", "broken.jpg"))
    ds = ray.data.read_binary_files(paths, include_paths=True, num_cpus=ray_batch.READ_CPUS)
    s = bounded(ray_batch.explain_dataset, tiny.explain, [], tmp_path / "ds", dataset=ds, actors=1,
                progress=False, options=ray_batch.ExplainOptions(batch_size=2))
    assert (s.explained, s.failed) == (2, 1)
    rows = {Path(r["file"]).name: r for r in ray_batch.read_results(tmp_path / "ds").to_pylist()}
    assert rows["chelsea.png"]["error"] is None and rows["broken.jpg"]["error"]


# ----------------------------------------------------------------------------- serve


def test_ray_serve_answers_kserve_v1_explain_as_the_plain_server(cluster, tiny, folder):
    from ray import serve

    from onnx_explain import ray_serve
    from serving import free_port

    body = {"instances": [{"b64": b64(folder / "chelsea.png")}, {"b64": b64(folder / "broken.jpg")}],
            "parameters": {"method": "gradcam", "heatmap": True, "top_k": 3}}
    cfg = config(tiny.explain, workers=1)
    with running(cfg) as plain, plain.client() as c:
        want = c.post("/v1/models/tiny:explain", json=body)
        want_ok = c.post("/v1/models/tiny:explain", json={**body, "instances": body["instances"][:1]})
    import dataclasses

    port = free_port()
    url = bounded(ray_serve.deploy, dataclasses.replace(cfg, port=port), replicas=1, replica_cpus=0.5,
                  connect=False, timeout=90)
    assert url == f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 60
            while c.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "Serve replica not ready"
                time.sleep(0.2)
            got = c.post("/v1/models/tiny:explain", json=body)
            got_ok = c.post("/v1/models/tiny:explain", json={**body, "instances": body["instances"][:1]})
        assert got.status_code == want.status_code  # the bad image: same refusal
        assert got.json() == want.json()
        assert got_ok.status_code == want_ok.status_code == 200
        g, w = got_ok.json(), want_ok.json()
        assert g["predictions"] == w["predictions"]
        (ge,), (we,) = g["explanations"], w["explanations"]
        assert (ge["class"], ge["label"], ge["box"]) == (we["class"], we["label"], we["box"])
        assert ge["heatmap"] == we["heatmap"]
        assert assert_loopback_only() >= 8  # the proxy and the replica too
    finally:
        bounded(serve.shutdown, timeout=60)


def test_serve_command_on_ray(cluster, tiny, folder):
    """`onnx-explain serve --ray --replicas 1`, joining the test's cluster: ready, answers
    :explain, stops on SIGTERM and takes its deployment down."""
    import signal

    from serving import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "onnx_explain.command.cli", "serve", str(tiny.explain),
                             "--name", "tiny", "--port", str(port), "--device", "cpu", "--threads", "1",
                             "--ray", "--ray-address", cluster.address_info["gcs_address"], "--replicas", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve --ray not ready"
            time.sleep(0.3)
        body = {"instances": [{"b64": b64(folder / "coffee.png")}], "parameters": {"method": "gradcam"}}
        r = httpx.post(url + "/v1/models/tiny:explain", json=body, timeout=30)
        assert r.status_code == 200, r.text
        with Explainer(tiny.explain, device="cpu", threads=1) as ex:
            (want,) = ex.explain([folder / "coffee.png"])
        assert r.json()["explanations"][0]["class"] == want.target_class
        assert assert_loopback_only() >= 8
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, 15), proc.stdout.read()  # 15: Ray's own SIGTERM handler
        deadline = time.monotonic() + 60  # the application is taken down (the shared proxy may stay)
        while True:
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code != 200:
                    break
            except httpx.HTTPError:
                break
            assert time.monotonic() < deadline, "the deployment outlived its command"
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
