"""Reading image files into RGB uint8 arrays, refusing bad files with one clear message.

Why this module exists rather than a bare ``cv2.imread``:

* ``cv2.imread`` returns ``None`` with no reason; a CLI explaining a folder of images
  must say *which* file is bad and *why*, then carry on with the others.
* The header is read by Pillow (lazily: nothing past the header is parsed, and its
  decompression-bomb guard runs) *before* decoding, so a file declaring 30000x30000 pixels
  is refused without allocating gigabytes, and a truncated file is caught by its missing
  end marker instead of decoding to a half-grey picture.  Anything a hostile header makes
  Pillow raise becomes an :class:`ImageError` naming the file.
* The decoders' own complaints (libjpeg's "Corrupt JPEG data", libpng's warnings) never
  reach the terminal: the file is refused with one line of ours, or decoded silently.
* Decoding uses ``IMREAD_UNCHANGED`` so alpha and 16-bit samples survive to be handled
  properly (alpha composited, 16 bits *scaled* to 8 rather than clipped); that flag makes
  OpenCV skip EXIF orientation for JPEG/PNG/WebP, so the orientation tag is read here and
  applied the way ``cv2.IMREAD_COLOR`` and ``PIL.ImageOps.exif_transpose`` do.  OpenCV's
  TIFF decoder already honours the TIFF orientation tag itself, whatever the flags.

Everything is returned as RGB (the order models are trained in), never OpenCV's BGR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import io
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "ImagePaths",
    "LoadedImage",
    "display_path",
    "iter_image_paths",
    "load_image",
]

# Refuse images with more pixels than this: decoding 100 MP RGB already takes 300 MB,
# and explaining needs a few float copies at original size.
DEFAULT_MAX_PIXELS = 100_000_000
# Smallest accepted side: a 1x1 or 4x4 "image" is almost always a tracking pixel or a
# broken export, and upsampling it to 224x224 explains nothing.
DEFAULT_MIN_SIDE = 8
# Refuse to read files larger than this into memory (a 100 MP 16-bit RGBA TIFF is 800 MB).
DEFAULT_MAX_FILE_BYTES = 1 << 30

# Extensions picked up when a directory or glob pattern is expanded (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp")

_FORMATS = "JPEG, PNG, BMP, TIFF or WebP"
_BLOCK_ROWS = 1024
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)


class ImageError(Exception):
    """A bad input image: ``str()`` is one line, ``"<path>: <problem>"``.

    A single class so that a caller can report every bad input by name and continue;
    ``path`` and ``problem`` are kept as attributes for structured reports.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{display_path(self.path) if self.path is not None else '<array>'}: {self.problem}")


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image: ``rgb`` is H x W x 3 uint8 in RGB order, EXIF orientation applied.

    ``original_size`` (height, width) is the pixel grid that heatmaps are mapped back to;
    the other fields describe the file, for reports.
    """

    rgb: np.ndarray
    path: Path | None = None
    format: str = "array"  # "JPEG", "PNG", "BMP", "TIFF", "WebP" or "array"
    orientation: int = 1  # EXIF orientation that was applied (1 = none)
    had_alpha: bool = False  # an alpha channel was composited away
    bit_depth: int = 8  # bits per sample in the file

    def __post_init__(self) -> None:
        rgb = self.rgb
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"LoadedImage.rgb must be an H x W x 3 uint8 array, got {getattr(rgb, 'shape', type(rgb))}")

    @property
    def original_size(self) -> tuple[int, int]:
        """(height, width) of the image as displayed (after EXIF orientation)."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @classmethod
    def from_array(cls, rgb: np.ndarray, path: str | os.PathLike | None = None) -> LoadedImage:
        """Wrap an in-memory RGB image (H x W x 3 or H x W gray, uint8)."""
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return cls(np.ascontiguousarray(arr), Path(path) if path is not None else None)


def display_path(path: str | os.PathLike | bytes) -> str:
    """``path`` as text any UTF-8 writer accepts: bytes of a file name that are not UTF-8
    (which Python keeps as lone surrogates) are shown as ``\\xNN``; valid names unchanged."""
    s = os.fsdecode(os.fspath(path))
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------- loading


def load_image(
    path: str | os.PathLike,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    background: tuple[int, int, int] = (255, 255, 255),
) -> LoadedImage:
    """Read a JPEG/PNG/BMP/TIFF/WebP file as RGB uint8, or raise :class:`ImageError`.

    * The format is recognised from the content, not the extension.
    * Width/height are read from the header and checked against ``min_side`` and
      ``max_pixels`` before any pixel is decoded.
    * Transparent images are composited over ``background`` (white by default: that
      is how viewers show them, and dropping alpha instead would expose whatever colour
      the encoder left under transparent pixels, often black or garbage).
    * 16-bit (and 10/12/14-bit TIFF) samples are scaled to 0..255 with rounding;
      floating-point TIFFs are taken as 0..1.
    * Multi-frame files (animated WebP/PNG, multi-page TIFF) give their first frame.
    """
    p = Path(path)
    if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
        raise ValueError(f"background must be an (R, G, B) triple in 0..255, got {background!r}")
    data = _read_file(p, max_file_bytes)
    fmt = _sniff(p, data)
    info = _read_header(p, data, fmt, max_pixels)
    height, width = info.height, info.width
    if height <= 0 or width <= 0:
        raise ImageError(p, f"corrupt {fmt} header: size {width}x{height}")
    _check_pixels(p, width, height, max_pixels)
    if min(width, height) < min_side:
        raise ImageError(p, f"image too small: {width}x{height} (minimum {min_side}x{min_side})")
    if not info.truncated and info.check is not None:
        info.truncated = info.check()
    if info.truncated:
        raise ImageError(p, f"truncated {fmt} file: {info.truncated}")

    try:
        arr = _decode(p, data, fmt)
        del data
        if arr.shape[0] * arr.shape[1] != width * height:
            raise ImageError(p, f"decoded size {arr.shape[1]}x{arr.shape[0]} does not match the header's {width}x{height}")
        bit_depth = info.bits if info.bits else 8 * arr.dtype.itemsize
        rgb, had_alpha = _to_rgb8(p, arr, info, background)
        del arr
        orientation = info.orientation if fmt in ("JPEG", "PNG", "WebP") else 1
        rgb = _apply_orientation(rgb, orientation)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(p, f"not enough memory to decode this {width}x{height} {fmt} image") from None
    except Exception as e:  # noqa: BLE001 - whatever a hostile file makes a decoder raise
        raise ImageError(p, f"cannot decode {fmt} data ({type(e).__name__}: {_reason(e)})") from None
    if fmt == "TIFF":
        orientation = info.orientation  # applied by OpenCV's TIFF decoder
    return LoadedImage(
        np.ascontiguousarray(rgb), p, fmt, orientation=orientation, had_alpha=had_alpha, bit_depth=int(bit_depth)
    )


def _check_pixels(p: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            p,
            f"image too large: {width}x{height} = {width * height / 1e6:.1f} megapixels "
            f"(limit {max_pixels / 1e6:g}; raise it with --max-pixels)",
        )


def _read_file(p: Path, max_file_bytes: int) -> bytes:
    try:
        st = p.stat()
    except ValueError:  # e.g. a NUL byte in the name
        raise ImageError(p, "not a usable file name") from None
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except OSError as e:
        raise ImageError(p, f"cannot access file: {e.strerror or e}") from None
    if p.is_dir():
        raise ImageError(p, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    try:
        with open(p, "rb") as f:
            _sniff(p, f.read(32))  # reject non-images before reading a big file
            if st.st_size > max_file_bytes:
                raise ImageError(p, f"file too large: {st.st_size} bytes (limit {max_file_bytes})")
            f.seek(0)
            return f.read()
    except PermissionError:
        raise ImageError(p, "cannot read file: permission denied") from None
    except OSError as e:
        raise ImageError(p, f"cannot read file: {e.strerror or e}") from None


_OTHER_MAGIC = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"8BPS", "a Photoshop document"),
)


def _sniff(p: Path, head: bytes) -> str:
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1").strip()
        raise ImageError(p, f"not a supported image: {brand!r} (HEIF/AVIF/MP4 family); expected {_FORMATS}")
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            raise ImageError(p, f"not a supported image: this is {what}; expected {_FORMATS}")
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise ImageError(p, f"not an image: the file holds text; expected {_FORMATS}")
    raise ImageError(p, f"not an image: unrecognised content; expected {_FORMATS}")


def _decode(p: Path, data: bytes, fmt: str) -> np.ndarray:
    buf = np.frombuffer(data, np.uint8)
    try:
        with _quiet_opencv():
            arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        msg = str(e).strip().splitlines()
        raise ImageError(p, f"cannot decode {fmt} data ({msg[-1] if msg else 'OpenCV error'})") from None
    if arr is None or arr.size == 0:
        raise ImageError(p, f"cannot decode {fmt} data (corrupt or unsupported variant)")
    return arr


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved_level = None
_quiet_saved_stderr: int | None = None


@contextlib.contextmanager
def _quiet_opencv():
    """Silence the decoders while they run: OpenCV's log lines, and what libjpeg, libpng
    and libtiff print straight to the process's standard error ("Corrupt JPEG data: ...",
    "libpng warning: iCCP: ..."); we raise our own one-line error, or the file was fine.

    OpenCV's log level and file descriptor 2 are process-wide, so nested/concurrent uses
    are counted and both are restored when the last one ends (what another thread writes
    to standard error while a decode runs is lost with them).
    """
    global _quiet_depth, _quiet_saved_level, _quiet_saved_stderr
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    with _quiet_lock:
        if _quiet_depth == 0:
            if log is not None:
                _quiet_saved_level = log.getLogLevel()
                log.setLogLevel(log.LOG_LEVEL_SILENT)
            _quiet_saved_stderr = _silence_fd(2)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                if log is not None:
                    log.setLogLevel(_quiet_saved_level)
                if _quiet_saved_stderr is not None:
                    with contextlib.suppress(OSError):
                        os.dup2(_quiet_saved_stderr, 2)
                    with contextlib.suppress(OSError):
                        os.close(_quiet_saved_stderr)
                    _quiet_saved_stderr = None


def _silence_fd(fd: int) -> int | None:
    """Point ``fd`` at the null device; return a copy of the old one (``None``: left alone)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor: nothing to silence
        return None
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except OSError:
        os.close(saved)
        return None
    return saved


def _to_rgb8(p: Path, arr: np.ndarray, info: _HeaderInfo, background: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """Any decoded OpenCV array (gray/BGR/BGRA, 8/16-bit/float) -> RGB uint8, alpha composited."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels not in (1, 3, 4):
        raise ImageError(p, f"unsupported number of channels: {channels}")

    if arr.dtype == np.uint8:
        maxval = 255.0
    elif arr.dtype in (np.uint16, np.uint32):
        bits = info.bits if info.bits and info.bits <= 8 * arr.dtype.itemsize else 8 * arr.dtype.itemsize
        maxval = float((1 << bits) - 1)
    elif arr.dtype in (np.float32, np.float64):
        maxval = 1.0
    else:
        raise ImageError(p, f"unsupported sample type {arr.dtype} (signed integers are not images we can show)")

    has_alpha = channels == 4
    if has_alpha:
        alpha = arr[:, :, 3]
        opaque = bool(np.all(alpha >= maxval)) if arr.dtype.kind != "f" else bool(np.all(alpha >= 1.0))
        if opaque:
            arr, has_alpha = arr[:, :, :3], False

    if not has_alpha and arr.dtype == np.uint8:
        out = arr
    elif not has_alpha and arr.dtype == np.uint16:
        # A 65536-entry table: round(v * 255 / maxval), values above maxval saturate.
        lut = np.rint(np.minimum(np.arange(65536, dtype=np.float64), maxval) * (255.0 / maxval)).astype(np.uint8)
        out = np.take(lut, arr)
    else:
        # Float math in row blocks keeps temporaries bounded; for 8..16-bit integer
        # samples round(v * 255 / maxval) never lands near a .5 tie, so float32 is exact.
        out = np.empty(arr.shape[:2] + (1 if channels == 1 else 3,), np.uint8)
        # TIFF alpha: ExtraSamples=1 is stored premultiplied; ExtraSamples=2 (straight) is
        # premultiplied by libtiff's RGBA reader, which OpenCV uses for 8-bit output; no
        # ExtraSamples tag (what cv2.imwrite writes for BGRA) is read back straight.
        premultiplied = info.format == "TIFF" and (
            info.tiff_extra_samples == 1 or (info.tiff_extra_samples == 2 and arr.dtype == np.uint8)
        )
        bg = np.asarray(background, np.float32)[::-1] / np.float32(255.0)  # BGR, 0..1
        for r0 in range(0, arr.shape[0], _BLOCK_ROWS):
            block = arr[r0 : r0 + _BLOCK_ROWS].astype(np.float32)
            if arr.dtype.kind == "f":
                block = np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=0.0)
            else:
                block *= np.float32(1.0 / maxval)
            np.clip(block, 0.0, 1.0, out=block)
            if has_alpha:
                a = block[:, :, 3:4]
                color = block[:, :, :3]
                if not premultiplied:
                    color = color * a
                block = color + bg * (1.0 - a)
            out[r0 : r0 + _BLOCK_ROWS] = np.clip(np.rint(block * np.float32(255.0)), 0, 255).astype(np.uint8)

    out = np.ascontiguousarray(out)
    if out.shape[2] == 1:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)
    else:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)  # ~10x faster than a reversed-stride copy
    return out, channels == 4 and has_alpha


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) so the image shows the way the camera meant."""
    if orientation == 2:  # mirrored horizontally
        return cv2.flip(img, 1)
    if orientation == 3:  # rotated 180
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:  # mirrored vertically
        return cv2.flip(img, 0)
    if orientation == 5:  # transpose (mirror about the main diagonal)
        return cv2.transpose(img)
    if orientation == 6:  # stored rotated 90 CCW: rotate 90 CW to display
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:  # transverse (mirror about the anti-diagonal)
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:  # stored rotated 90 CW: rotate 90 CCW to display
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


# --------------------------------------------------------------------------- headers
#
# Pillow reads the headers: ``Image.open`` parses only up to the pixel data (lazy), and
# every format's quirks (BigTIFF, odd tag types and counts, VP8/VP8L/VP8X, BMP variants)
# are its maintainers' business, not ours.  What is checked here on top of it is only what
# Pillow leaves to decoding time: a file cut short after its header.


@dataclasses.dataclass
class _HeaderInfo:
    format: str
    width: int
    height: int
    bits: int = 0  # bits per sample when the header says (0 = unknown)
    orientation: int = 1
    truncated: str = ""  # why the file looks truncated ("" = complete)
    tiff_extra_samples: int | None = None  # TIFF ExtraSamples: 1 premultiplied alpha, 2 straight
    check: Callable[[], str] | None = None  # a later, costlier truncation check ("" = complete)


_PIL_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF", "WebP": "WEBP"}
# Pillow keeps some state process-wide (its warnings go through the global filter list):
# header reads are short, so they take turns.
_pillow_lock = threading.Lock()


def _pillow_open(data: bytes, fmt: str):
    """Pillow's lazy image for ``data`` (header parsed, no pixel decoded).

    Pillow's decompression-bomb guard runs first; where it refuses, the header is read
    without it only to learn the size, which the caller checks against its own
    ``max_pixels`` (the guard's limit is Pillow's process-wide default; ours is per call).
    """
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError:
        factory = Image.OPEN[_PIL_FORMATS[fmt]][0]
        return factory(io.BytesIO(data))


def _exif_orientation(blob: bytes | None) -> int:
    """Orientation (1..8) from an EXIF blob, 1 when absent or unreadable."""
    if not blob:
        return 1
    from PIL import Image

    try:
        value = Image.Exif()
        value.load(bytes(blob))
        o = int(value.get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses its orientation
        return 1
    return o if 1 <= o <= 8 else 1


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP header declares, read the way Pillow reads it (Pillow's WebP
    reader allocates the canvas while opening, so the size is checked before that)."""
    try:
        from PIL.WebPImagePlugin import _get_size
    except ImportError:  # an older or newer Pillow: its own guard still applies
        return None
    try:
        return _get_size(bytes(data[:30]))
    except Exception:  # noqa: BLE001
        return None


def _read_header(p: Path, data: bytes, fmt: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> _HeaderInfo:
    from PIL import Image

    n = len(data)
    if fmt == "WebP":
        riff = int.from_bytes(data[4:8], "little") + 8
        if riff > n + 1:  # (+1: a final pad byte some writers omit)
            raise ImageError(p, f"truncated WebP file: the RIFF header declares {riff} bytes, the file has {n}")
        size = _webp_size(data)
        if size is not None:
            _check_pixels(p, size[0], size[1], max_pixels)
    with _pillow_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd files: we raise our own error or go on
        try:
            im = _pillow_open(data, fmt)
            width, height = (int(v) for v in im.size)
            info = _HeaderInfo(fmt, width=width, height=height)
            if fmt == "JPEG":
                info.bits = int(getattr(im, "bits", 0) or 0)
                info.orientation = _exif_orientation(im.info.get("exif"))
                scan = int(im.fp.tell())  # Pillow stops right after the first scan's header
                if data.find(b"\xff\xd9", scan) < 0:
                    info.truncated = "no end-of-image marker (the file was cut short)"
            elif fmt == "PNG":
                info.bits = data[24] if n > 24 else 0
                info.orientation = _exif_orientation(im.info.get("exif"))
                info.check = functools.partial(_png_complete, p, data)
            elif fmt == "WebP":
                info.orientation = _exif_orientation(im.info.get("exif"))
            elif fmt == "TIFF":
                tags = im.tag_v2
                bits = tags.get(258)
                info.bits = int(max(bits)) if isinstance(bits, tuple) and bits else int(bits or 0)
                o = tags.get(274)
                info.orientation = int(o) if isinstance(o, int) and 1 <= o <= 8 else 1
                extra = tags.get(338)
                info.tiff_extra_samples = int(extra[0] if isinstance(extra, tuple) and extra else extra) if extra else None
                for offs, counts in ((273, 279), (324, 325)):
                    o, c = tags.get(offs), tags.get(counts)
                    o = o if isinstance(o, tuple) else (o,) if o is not None else ()
                    c = c if isinstance(c, tuple) else (c,) if c is not None else ()
                    if o and len(o) == len(c):
                        end = max(int(a) + int(b) for a, b in zip(o, c))
                        if end > n:
                            info.truncated = f"image data runs to byte {end}, the file has {n}"
            elif fmt == "BMP":
                info.bits = 8
                tile = im.tile[0] if im.tile else None
                if tile is not None and tile[0] == "raw":
                    stride = abs(int(tile[3][1])) if len(tile[3]) > 1 and tile[3][1] else 0
                    need = int(tile[2]) + stride * height
                    if stride and need > n:
                        info.truncated = f"pixel data needs {need} bytes, the file has {n}"
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(p, f"image too large for Pillow's decompression-bomb guard ({_reason(e)})") from None
        except Image.UnidentifiedImageError:
            what = "truncated or corrupt" if fmt in ("TIFF", "WebP") else "corrupt"
            raise ImageError(p, f"{what} {fmt} file: its header cannot be read") from None
        except Exception as e:  # noqa: BLE001 - any failure inside a header is a bad file
            raise ImageError(p, f"truncated or corrupt {fmt} header ({_reason(e)})") from None
    return info


def _png_complete(p: Path, data: bytes) -> str:
    """Every chunk present with its checksum, up to IEND: ``""``, or why it is truncated."""
    if b"IDAT" not in data:
        raise ImageError(p, "corrupt PNG: no image data (IDAT)")
    with _pillow_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _pillow_open(data, "PNG").verify()
        except (EOFError, OSError) as e:
            text = _reason(e)
            if "truncat" in text.lower() or isinstance(e, EOFError):
                return f"the file was cut short ({text})"
            raise ImageError(p, f"corrupt PNG: {text}") from None
        except Exception as e:  # noqa: BLE001
            text = _reason(e)
            m = re.search(r"checksum in b'(\w{4})'", text)
            if m:
                raise ImageError(p, f"corrupt PNG: checksum mismatch in the {m.group(1)} chunk") from None
            raise ImageError(p, f"corrupt PNG: {text}") from None
    return ""


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


# --------------------------------------------------------------------------- inputs


class ImagePaths(NamedTuple):
    """Expanded inputs: the image files to process, and one :class:`ImageError` per bad input.

    Unpack as ``paths, problems = iter_image_paths(args)``; a CLI prints every problem
    and goes on with ``paths``.
    """

    paths: list[Path]
    problems: list[ImageError]


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def iter_image_paths(
    inputs: Sequence[str | os.PathLike],
    *,
    recursive: bool = False,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> ImagePaths:
    """Expand files, directories and glob patterns into a list of image paths.

    * An explicit file is kept whatever its extension (its content is checked when
      loaded); a missing one becomes a problem, never a silent skip.
    * A directory gives its files with an image extension (case-insensitive), sorted by
      name; hidden files (``.name``, e.g. macOS ``._x.jpg``) are skipped; subdirectories
      only with ``recursive=True``.  A directory with no images is a problem.
    * A pattern with ``*``, ``?`` or ``[`` is expanded (``**`` matches subdirectories),
      keeping image files; a pattern matching none is a problem.
    * Order follows the inputs; a file named twice is kept once.
    """
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    shown = ", ".join(sorted(exts))
    paths: list[Path] = []
    problems: list[ImageError] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    def is_image(p: Path) -> bool:
        return p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()

    for raw in inputs:
        s = os.fspath(raw)
        p = Path(s).expanduser()
        if p.is_file():
            add(p)
        elif p.is_dir():
            try:
                candidates = p.rglob("*") if recursive else p.iterdir()
                found = sorted(
                    (c for c in candidates if is_image(c) and not any(part.startswith(".") for part in c.relative_to(p).parts)),
                    key=lambda c: c.relative_to(p).as_posix(),
                )
            except OSError as e:
                problems.append(ImageError(p, f"cannot list directory: {e.strerror or e}"))
                continue
            if not found:
                problems.append(ImageError(p, f"directory has no image files ({shown})"))
            for c in found:
                add(c)
        elif _has_glob(s):
            found = sorted(Path(m) for m in glob.glob(os.path.expanduser(s), recursive=True) if is_image(Path(m)))
            if not found:
                problems.append(ImageError(s, f"pattern matches no image files ({shown})"))
            for c in found:
                add(c)
        elif os.path.lexists(p):
            problems.append(ImageError(p, "not a regular file or directory (or a broken link)"))
        else:
            problems.append(ImageError(p, "no such file or directory"))
    return ImagePaths(paths, problems)
