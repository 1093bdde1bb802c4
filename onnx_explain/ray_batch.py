"""Explaining a whole data set on Ray (``pip install onnx-explain[ray]``).

Images are read by Ray Data (``read_binary_files``: local folders, or any filesystem
pyarrow opens, ``s3://``, ``gs://``, ``hdfs://``...), decoded and explained by a pool of
actors that each hold one explain session (``compute=ActorPoolStrategy``), and the
results are written as Parquet by the driver, one file per chunk of inputs::

    OUT/parts/part-<hash of the chunk's file names>.parquet   one row per image
    OUT/overlays/<stem>-<hash>.<method>.png                   written by the actors

A row: ``file, method, class, label, probability, score, box, map, map_shape,
decode_s, explain_s, overlay, error``; ``map`` is the method's low-resolution map
(flattened, ``map_shape`` gives its shape).  A bad image is a row with ``error`` set,
never a failed job.  A part is written atomically (temporary name, then rename) once
all its rows are in; a re-run reads the file names already written and explains only
the others, so an interrupted job loses nothing and does nothing twice.

This module imports ray only inside its functions: the base runtime never loads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

#: Files per Parquet part (the unit of restart).
CHUNK_SIZE = 256
#: CPUs a read task asks for: small, so that reads always fit next to the actors.
READ_CPUS = 0.25

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("file", pa.string()), ("method", pa.string()), ("class", pa.int64()), ("label", pa.string()),
        ("probability", pa.float64()), ("score", pa.float64()), ("box", pa.list_(pa.float64())),
        ("map", pa.list_(pa.float32())), ("map_shape", pa.list_(pa.int64())),
        ("decode_s", pa.float64()), ("explain_s", pa.float64()), ("overlay", pa.string()), ("error", pa.string()),
    ])


# ----------------------------------------------------------------------------- cluster


def init_ray(address: str | None = None, *, num_cpus: float | None = None, **kwargs: Any):
    """Connect to Ray. ``address`` None or ``"local"``: start a one-machine cluster whose
    every listening socket is on 127.0.0.1 (Ray otherwise binds the machine's address and
    all interfaces); ``"auto"`` or ``HOST:PORT``: join an existing cluster."""
    if address in (None, "local"):
        # read by ray when it is imported: the node address then defaults to loopback,
        # and the C++ servers (GCS, raylet, workers) listen on 127.0.0.1 only
        os.environ[_LOOPBACK_ENV] = "0"
        import ray
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # when ray was imported before
        kwargs.setdefault("log_to_driver", False)
        return ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                        num_cpus=num_cpus, **kwargs)
    import ray

    return ray.init(address=address, **kwargs)


# ----------------------------------------------------------------------------- inputs


def list_images(sources: Sequence[str]) -> tuple[Any, list[str], list[str]]:
    """(pyarrow filesystem, image paths, problems) for files, folders and globs, or URIs
    (``s3://bucket/prefix``) of one filesystem; local inputs are expanded as the plain
    command line expands them (same extensions, not recursive)."""
    import pyarrow.fs as pafs

    from onnx_explain.images import IMAGE_EXTENSIONS, iter_image_paths

    remote = [s for s in sources if "://" in s and not s.startswith("file://")]
    if not remote:
        paths, problems = iter_image_paths([s.removeprefix("file://") for s in sources])
        return pafs.LocalFileSystem(), [os.path.abspath(str(p)) for p in paths], [str(p) for p in problems]
    if len(remote) != len(sources):
        raise ValueError("mix of local paths and URIs: give one filesystem per run")
    fs = None
    out: list[str] = []
    problems: list[str] = []
    for s in sources:
        f, root = pafs.FileSystem.from_uri(s)
        fs = fs or f
        info = f.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            infos = f.get_file_info(pafs.FileSelector(root, recursive=False))
            out += sorted(i.path for i in infos
                          if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_EXTENSIONS))
        elif info.type == pafs.FileType.File:
            out.append(root)
        else:
            problems.append(f"{s}: no such file or folder")
    return fs, out, problems


def chunk_id(paths: Sequence[str]) -> str:
    """Stable name of a chunk: a hash of its file names."""
    return hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def done_files(out_dir: Path) -> set[str]:
    """File names that already have a row in a part of ``out_dir``."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for part in sorted((out_dir / "parts").glob("part-*.parquet")):
        done.update(pq.read_table(part, columns=["file"]).column("file").to_pylist())
    return done


def read_results(out_dir: str | os.PathLike):
    """Every part of ``out_dir`` as one pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted((Path(out_dir) / "parts").glob("part-*.parquet"))
    if not parts:
        return _schema().empty_table()
    return pa.concat_tables([pq.read_table(p) for p in parts])


# ----------------------------------------------------------------------------- actors


@dataclasses.dataclass
class ExplainOptions:
    method: str = "gradcam"
    target: int | None = None
    top_k: int = 5
    batch_size: int = 8
    threads: int | None = 1
    max_pixels: int | None = None
    overlays: bool = True
    colormap: str = "jet"
    alpha: float = 0.5


class ExplainActor:
    """One explain session per actor; a batch of ``{path, bytes}`` in, result rows out."""

    def __init__(self, model: str, out_dir: str, options: ExplainOptions) -> None:
        import tempfile

        from onnx_explain.explainer import Explainer
        from onnx_explain.images import DEFAULT_MAX_PIXELS

        self.o = options
        self.ex = Explainer(model, device="cpu", threads=options.threads,
                            max_pixels=options.max_pixels or DEFAULT_MAX_PIXELS)
        self.ex.method(options.method)  # a method the model cannot do fails here, once
        self.overlay_dir = Path(out_dir) / "overlays"
        self.overlay_dir.mkdir(parents=True, exist_ok=True)
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.scratch = Path(tempfile.mkdtemp(prefix="onnx-explain-ray-", dir=base))

    def _decode(self, path: str, data: bytes):
        from onnx_explain.images import ImageError, load_image

        tmp = self.scratch / uuid.uuid4().hex
        try:
            tmp.write_bytes(data)
            im = load_image(tmp, max_pixels=self.ex.max_pixels)
        except ImageError as err:
            raise ImageError(path, err.problem) from None
        finally:
            tmp.unlink(missing_ok=True)
        return dataclasses.replace(im, path=path)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        from onnx_explain.explainer import ItemError, _reason
        from onnx_explain.images import ImageError
        from onnx_explain.outputs import write_png
        from onnx_explain.overlay import caption, draw_box, overlay

        rows: list[dict[str, Any]] = []
        loaded, decode_s = [], []
        for path, data in zip(batch["path"], batch["bytes"]):
            path = str(path)
            t = time.perf_counter()
            try:
                loaded.append(self._decode(path, bytes(data)))
                decode_s.append(time.perf_counter() - t)
            except ImageError as exc:
                rows.append(_row(path, self.o.method, error=str(exc)))
            except Exception as exc:  # noqa: BLE001 - this image's own failure, memory included
                rows.append(_row(path, self.o.method, error=f"{path}: {_reason(exc)}"))
        results = self.ex.iter_explain(loaded, method=self.o.method, target=self.o.target,
                                       batch_size=self.o.batch_size, top_k=self.o.top_k, errors="return")
        for im, d, e in zip(loaded, decode_s, results):
            if isinstance(e, ItemError):
                rows.append(_row(im.path, self.o.method, error=e.message, decode_s=d))
                continue
            written = None
            if self.o.overlays:
                try:
                    picture = overlay(im.rgb, e.heatmap, colormap=self.o.colormap, alpha=self.o.alpha)
                    if e.box is not None:
                        picture = draw_box(picture, e.box, (255, 255, 255), label=caption(e.label, e.probability))
                    written = str(write_png(self.overlay_dir / f"{overlay_stem(im.path)}.{self.o.method}.png",
                                            picture))
                except Exception as exc:  # noqa: BLE001
                    rows.append(_row(im.path, self.o.method, error=f"{im.path}: writing its overlay failed: "
                                                                   f"{_reason(exc)}", decode_s=d))
                    continue
            raw = np.asarray(e.raw_map, dtype=np.float32)
            rows.append(_row(im.path, self.o.method, cls=e.target_class, label=e.label, probability=e.probability,
                             score=e.score, box=None if e.box is None else [float(v) for v in e.box],
                             map=raw.ravel().tolist(), map_shape=list(raw.shape), decode_s=d,
                             explain_s=e.seconds, overlay=written))
        return pa.Table.from_pylist(rows, schema=_schema())


def _row(file: str, method: str, *, cls=None, label=None, probability=None, score=None, box=None, map=None,
         map_shape=None, decode_s=None, explain_s=None, overlay=None, error=None) -> dict[str, Any]:
    return {"file": file, "method": method, "class": cls, "label": label, "probability": probability,
            "score": score, "box": box, "map": map, "map_shape": map_shape, "decode_s": decode_s,
            "explain_s": explain_s, "overlay": overlay, "error": error}


def overlay_stem(path: str) -> str:
    """A unique, safe overlay name for an input: its stem and a hash of its full path."""
    from onnx_explain.outputs import safe_name

    stem = safe_name(Path(path).stem)[:120] or "image"
    return f"{stem}-{hashlib.sha256(path.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


# ----------------------------------------------------------------------------- the job


@dataclasses.dataclass
class RunSummary:
    images: int  # inputs found
    skipped: int  # already in a part: not redone
    explained: int  # rows written now, errors included
    failed: int  # rows written now with an error
    parts: int  # parts written now
    seconds: float


def explain_dataset(model: str | os.PathLike, sources: Sequence[str], out_dir: str | os.PathLike, *,
                    options: ExplainOptions | None = None, actors: int = 1, actor_cpus: float | None = None,
                    chunk_size: int = CHUNK_SIZE, progress: bool = True, dataset=None,
                    max_parts: int | None = None) -> RunSummary:
    """Explain every image of ``sources`` on the Ray cluster this process is connected to
    (see :func:`init_ray`), writing ``out_dir/parts/*.parquet`` and overlays.

    ``actors``: explain sessions (one per actor); ``actor_cpus``: CPUs each asks for
    (default: what leaves room for the read tasks on this cluster).  ``dataset``: a
    ``ray.data.Dataset`` with ``path`` and ``bytes`` columns to explain instead of
    reading ``sources`` (then every row is explained: no restart bookkeeping by file
    listing, but parts are still skipped by name).  ``max_parts``: stop after writing
    that many parts (a bounded run; the rest is done by the next run).
    """
    import pyarrow.parquet as pq
    import ray

    options = options or ExplainOptions()
    model = os.path.abspath(os.fspath(model))
    out = Path(out_dir)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / "parts").glob(".tmp-*"):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    done = done_files(out)
    if dataset is None:
        fs, paths, problems = list_images(list(sources))
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        todo = sorted(set(paths) - done)
        n_images = len(set(paths))
    else:
        fs, problems = None, []
        todo = None
        n_images = None
    skipped = (n_images - len(todo)) if todo is not None else 0
    chunks: list[list[str]] = []
    if todo is not None:
        chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
        if max_parts is not None:
            chunks = chunks[:max_parts]
        todo = [p for c in chunks for p in c]
    if actor_cpus is None:
        total = float(ray.cluster_resources().get("CPU", 1))
        actor_cpus = max(0.1, min(1.0, (total - READ_CPUS * 2) / max(actors, 1)))
    if todo is not None and not todo:
        return RunSummary(n_images, skipped, 0, 0, 0, time.perf_counter() - t0)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # chunks complete in turn: bounded driver memory
    ctx.enable_progress_bars = False
    if dataset is None:
        ds = ray.data.read_binary_files(todo, include_paths=True, filesystem=fs,
                                        num_cpus=READ_CPUS,
                                        override_num_blocks=max(1, min(len(todo), 4 * actors * 4)))
    else:
        ds = dataset
    ds = ds.map_batches(ExplainActor, fn_constructor_args=(model, str(out), options),
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus,
                        batch_size=options.batch_size, batch_format="numpy")

    if todo is not None:
        owner = {p: i for i, c in enumerate(chunks) for p in c}
        sizes = [len(c) for c in chunks]
    pending: dict[int, list[dict]] = {}
    free_rows: list[dict] = []
    written = failed = parts = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) if todo is not None else None, desc="explaining (ray)", unit="img",
                   file=sys.stderr)

    def write_part(rows: list[dict]) -> None:
        nonlocal written, failed, parts
        import pyarrow as pa

        rows.sort(key=lambda r: r["file"])
        name = chunk_id([r["file"] for r in rows])
        tmp = out / "parts" / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp)
        os.replace(tmp, out / "parts" / f"part-{name}.parquet")
        written += len(rows)
        failed += sum(1 for r in rows if r["error"] is not None)
        parts += 1

    try:
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows = table.to_pylist()
            if bar is not None:
                bar.update(len(rows))
            if todo is None:
                free_rows += rows
                while len(free_rows) >= chunk_size:
                    write_part(free_rows[:chunk_size])
                    free_rows = free_rows[chunk_size:]
                continue
            for r in rows:
                r["file"] = _local(r["file"], owner)
                i = owner[r["file"]]
                pending.setdefault(i, []).append(r)
                if len(pending[i]) == sizes[i]:
                    write_part(pending.pop(i))
        if free_rows:
            write_part(free_rows)
        if pending:  # inputs that never came back (a read that failed): rows with the reason
            for i, rows in list(pending.items()):
                seen = {r["file"] for r in rows}
                rows += [_row(p, options.method, error=f"{p}: not read") for p in chunks[i] if p not in seen]
                write_part(pending.pop(i))
    finally:
        if bar is not None:
            bar.close()
    return RunSummary(n_images if n_images is not None else written, skipped, written, failed, parts,
                      time.perf_counter() - t0)


def _local(path: str, owner: dict[str, Any]) -> str:
    if path in owner:
        return path
    for cand in ("/" + path.lstrip("/"), path.removeprefix("local://")):
        if cand in owner:
            return cand
    raise KeyError(f"unexpected path from the reader: {path!r}")


def run_cli(model: str, sources: Iterable[str], out_dir: str, *, address: str | None, actors: int,
            options: ExplainOptions, as_json: bool = False) -> int:
    """``onnx-explain explain --ray``: start or join a cluster, run, print a summary."""
    import json

    sources = list(sources)
    if not any("://" in s for s in sources):  # all done already: no cluster to start
        _, paths, _ = list_images(sources)
        if paths and set(paths) <= done_files(Path(out_dir)):
            s = RunSummary(len(set(paths)), len(set(paths)), 0, 0, 0, 0.0)
            doc = dict(dataclasses.asdict(s), ray_startup_s=0.0, out=str(Path(out_dir) / "parts"))
            print(json.dumps(doc, indent=2) if as_json else
                  f"all {s.images} image(s) already done in {doc['out']}: nothing to explain")
            return 0
    t = time.perf_counter()
    init_ray(address)
    startup = time.perf_counter() - t
    try:
        s = explain_dataset(model, list(sources), out_dir, options=options, actors=actors,
                            progress=not as_json)
    finally:
        import ray

        ray.shutdown()
    doc = dict(dataclasses.asdict(s), ray_startup_s=round(startup, 3), out=str(Path(out_dir) / "parts"))
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{s.explained} image(s) explained ({s.failed} with an error), {s.skipped} already done, "
              f"{s.parts} part(s) written to {doc['out']} in {s.seconds:.1f} s (+{startup:.1f} s Ray startup)")
    return 1 if s.failed else 0
