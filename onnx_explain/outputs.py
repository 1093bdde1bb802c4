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
import errno
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import IO, Any

import cv2
import numpy as np

__all__ = [
    "FolderBusy",
    "LOCK_NAME",
    "TMP_SUFFIX",
    "atomic_open",
    "clean_stale_temporaries",
    "dumps_strict",
    "for_terminal",
    "lock_folder",
    "safe_name",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_npy",
    "write_png",
]

# Temporary files are ".<target name>.<random>" + TMP_SUFFIX: the suffix says they are
# ours, so the ones a killed run left behind can be removed without touching anyone else's.
TMP_SUFFIX = ".onnx-explain.tmp"
LOCK_NAME = ".onnx-explain.lock"
NAME_MAX = 255  # bytes in one file name on the usual file systems
_RANDOM = 8  # characters mkstemp adds


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
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_tmp_prefix(target.name), suffix=TMP_SUFFIX)
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


def _tmp_prefix(name: str) -> str:
    """``".<name>."``, the name cut so that the whole temporary name stays within
    :data:`NAME_MAX` bytes (a legal 250-byte target must not fail for its temporary)."""
    room = NAME_MAX - 2 - _RANDOM - len(TMP_SUFFIX.encode())
    raw = os.fsencode(name)
    if len(raw) > room:
        raw = raw[:room]
    return "." + os.fsdecode(raw) + "."


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed run of this tool left in ``folder`` (only
    names ``.*`` + :data:`TMP_SUFFIX`, plain files, not links); return what was removed.

    Call it while holding :func:`lock_folder`, so that no live run's file is taken."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


class FolderBusy(Exception):
    """Another run holds the output folder."""


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for one run: a second run into the same folder
    is refused with :class:`FolderBusy` instead of mixing its files and report with ours.

    The lock is an advisory ``flock`` on ``folder/.onnx-explain.lock``: the system drops
    it when the process ends, even by ``kill -9``.  The file is removed on release."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / LOCK_NAME
    fd = _acquire(lock_path, folder)
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def _acquire(lock_path: Path, folder: Path) -> int:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; a lock file made exclusively instead
        try:
            return os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            raise FolderBusy(f"{folder}: another onnx-explain run is writing here (or left {LOCK_NAME}); "
                             "wait for it, or choose another --out") from None
    for _ in range(20):
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(f"{folder}: another onnx-explain run is writing here; wait for it to end, "
                                 "or choose another --out") from None
            raise
        try:  # the file we locked is still the one at the path (not one a finishing run just removed)
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise FolderBusy(f"{folder}: could not take the output folder's lock")


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: Any) -> str:
    """``text`` safe to print: control characters (escape sequences, newlines, carriage
    returns), bidirectional overrides and undecodable file-name bytes written as
    backslash escapes, so a label or file name can neither restyle the terminal nor
    forge a line of output."""
    return _UNSAFE.sub(_escape, str(text))


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text (after :func:`to_jsonable`: NaN and infinities become ``null``)."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


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
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return _utf8(obj)
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
        return _utf8(str(obj))
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def _utf8(text: str) -> str:
    """``text`` unchanged, or with the bytes of a non-UTF-8 file name (lone surrogates,
    which no UTF-8 writer accepts) written as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_name(text: str) -> str:
    """``text`` as part of a file name we write: control characters, bidirectional
    overrides and undecodable bytes become ``_`` (so report.json names it exactly)."""
    return _UNSAFE.sub("_", text)


def _key(k: Any) -> str:
    k = to_jsonable(k)
    return k if isinstance(k, str) else json.dumps(k)
