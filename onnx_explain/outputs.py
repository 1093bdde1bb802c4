"""Writing results so that every output file appears whole or not at all.

Why: a run interrupted by an error, Ctrl-C or a full disk must not leave a half-written
PNG or a truncated JSON that a later step (or a user) takes for a result.  Each writer
produces the bytes into a temporary file in the *same directory* (so the final rename
never crosses file systems), flushes and fsyncs it, then ``os.replace``s it onto the
target: atomic on POSIX and Windows.  On any failure the temporary file is removed and an
existing target is left untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import IO, Any

import cv2
import numpy as np

__all__ = ["atomic_open", "to_jsonable", "write_bytes", "write_json", "write_npy", "write_png"]


def _file_mode() -> int:
    """Permissions a plain ``open()`` would give a new file (0o666 minus the umask).

    ``mkstemp`` creates files as 0o600; without this, results would be private to the user.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no other way to read it; restored at once
    os.umask(old)
    return 0o666 & ~old


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; it becomes ``path`` on success.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8 by default).  Parent directories are
    created.  If the ``with`` body raises, nothing appears at ``path`` (an older file there
    stays as it was) and the temporary file is deleted.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        kwargs = {"encoding": encoding or "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an image as PNG atomically: H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA), uint8 or uint16."""
    arr = np.asarray(rgb)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png needs uint8 or uint16 pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGBA2BGRA)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim != 2:
        raise ValueError(f"write_png needs H x W, H x W x 3 or H x W x 4, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"write_png got an empty image {arr.shape}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError(f"PNG encoding failed for {path}")
    return write_bytes(path, encoded.tobytes())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an array as ``.npy`` atomically (no pickled objects: object arrays are refused)."""
    arr = np.asarray(array)
    if arr.dtype == object:
        raise ValueError("write_npy refuses object arrays (they would need pickle)")
    with atomic_open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as UTF-8 JSON atomically, after :func:`to_jsonable` (so numpy values work)."""
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    with atomic_open(path, "w") as f:
        f.write(text + "\n")
    return Path(path)


def _float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def to_jsonable(obj: Any) -> Any:
    """Convert to plain JSON types: numpy scalars/arrays, paths, dataclasses, enums, sets, dates.

    * NaN and infinities become ``null`` (JSON has no such numbers; strict parsers reject
      ``NaN``).
    * float32/float16 values are written with their shortest round-tripping decimal
      (``0.1`` rather than ``0.10000000149011612``).
    * Dict keys become strings; sets become sorted lists when their items sort.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float(float(obj))
    if isinstance(obj, np.generic):
        if isinstance(obj, (np.float16, np.float32)):
            return _float(float(str(obj)))  # numpy's str is the shortest repr for the type
        if isinstance(obj, np.complexfloating):
            raise TypeError(f"cannot write complex value {obj!r} as JSON")
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biu":
            return obj.tolist()
        if obj.dtype in (np.float16, np.float32):
            return [to_jsonable(x) for x in obj] if obj.ndim else to_jsonable(obj[()])
        if obj.dtype.kind == "f":
            return to_jsonable(obj.tolist())
        return [to_jsonable(x) for x in obj] if obj.ndim else to_jsonable(obj[()])
    if isinstance(obj, dict):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        with contextlib.suppress(TypeError):
            items.sort()
        return items
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def _key(k: Any) -> str:
    k = to_jsonable(k)
    return k if isinstance(k, str) else json.dumps(k)
