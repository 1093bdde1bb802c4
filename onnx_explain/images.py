"""Reading image files into RGB uint8 arrays, refusing bad files with one clear message.

Why this module exists rather than a bare ``cv2.imread``:

* ``cv2.imread`` returns ``None`` with no reason; a CLI explaining a folder of images
  must say *which* file is bad and *why*, then carry on with the others.
* The header is read by hand (PNG, JPEG, BMP, TIFF, WebP) *before* decoding, so a file
  declaring 30000x30000 pixels is refused without allocating gigabytes, and a truncated
  file is caught by its missing end marker instead of decoding to a half-grey picture.
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
import glob
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
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
        super().__init__(f"{self.path if self.path is not None else '<array>'}: {self.problem}")


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
    info = _PARSERS[fmt](p, data)
    height, width = info.height, info.width
    if height <= 0 or width <= 0:
        raise ImageError(p, f"corrupt {fmt} header: size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            p,
            f"image too large: {width}x{height} = {width * height / 1e6:.1f} megapixels "
            f"(limit {max_pixels / 1e6:g})",
        )
    if min(width, height) < min_side:
        raise ImageError(p, f"image too small: {width}x{height} (minimum {min_side}x{min_side})")
    if info.truncated:
        raise ImageError(p, f"truncated {fmt} file: {info.truncated}")

    arr = _decode(p, data, fmt)
    if arr.shape[0] * arr.shape[1] != width * height:
        raise ImageError(p, f"decoded size {arr.shape[1]}x{arr.shape[0]} does not match the header's {width}x{height}")
    bit_depth = info.bits if info.bits else 8 * arr.dtype.itemsize
    rgb, had_alpha = _to_rgb8(p, arr, info, background)
    orientation = info.orientation if fmt in ("JPEG", "PNG", "WebP") else 1
    rgb = _apply_orientation(rgb, orientation)
    if fmt == "TIFF":
        orientation = info.orientation  # applied by OpenCV's TIFF decoder
    return LoadedImage(
        np.ascontiguousarray(rgb), p, fmt, orientation=orientation, had_alpha=had_alpha, bit_depth=int(bit_depth)
    )


def _read_file(p: Path, max_file_bytes: int) -> bytes:
    try:
        st = p.stat()
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


@contextlib.contextmanager
def _quiet_opencv():
    """Silence OpenCV's own log lines while decoding: we raise our own one-line error.

    OpenCV's log level is process-wide, so nested/concurrent uses are counted and the
    previous level is restored when the last one ends.
    """
    global _quiet_depth, _quiet_saved_level
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved_level = log.getLogLevel()
            log.setLogLevel(log.LOG_LEVEL_SILENT)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                log.setLogLevel(_quiet_saved_level)


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


@dataclasses.dataclass
class _HeaderInfo:
    format: str
    width: int
    height: int
    bits: int = 0  # bits per sample when the header says (0 = unknown)
    orientation: int = 1
    truncated: str = ""  # why the file looks truncated ("" = complete)
    tiff_extra_samples: int | None = None  # TIFF ExtraSamples: 1 premultiplied alpha, 2 straight


def _u16be(d: bytes, o: int) -> int:
    return (d[o] << 8) | d[o + 1]


def _u32be(d: bytes, o: int) -> int:
    return int.from_bytes(d[o : o + 4], "big")


def _parse_jpeg(p: Path, d: bytes) -> _HeaderInfo:
    n = len(d)
    pos = 2
    info: _HeaderInfo | None = None
    orientation = 1
    while True:
        # Find the next marker (0xFF, possibly with fill bytes).
        if pos >= n:
            if info is None:
                raise ImageError(p, "truncated JPEG file: ends before the frame header")
            info.truncated = "ends before the image data"
            return info
        if d[pos] != 0xFF:
            raise ImageError(p, f"corrupt JPEG header: expected a marker at byte {pos}")
        while pos < n and d[pos] == 0xFF:
            pos += 1
        if pos >= n:
            continue
        marker = d[pos]
        pos += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:  # EOI before any scan
            if info is None:
                raise ImageError(p, "corrupt JPEG: no frame header")
            info.truncated = "no image data"
            return info
        if pos + 2 > n:
            if info is None:
                raise ImageError(p, "truncated JPEG file: ends inside the header")
            info.truncated = "ends inside a header segment"
            return info
        seglen = _u16be(d, pos)
        if seglen < 2:
            raise ImageError(p, f"corrupt JPEG header: bad segment length at byte {pos}")
        body = d[pos + 2 : pos + seglen]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if len(body) < 6:
                raise ImageError(p, "truncated JPEG file: ends inside the frame header")
            info = _HeaderInfo("JPEG", width=_u16be(body, 3), height=_u16be(body, 1), bits=body[0])
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(body[6:])
        elif marker == 0xDA:  # start of scan: the entropy-coded data follows
            if info is None:
                raise ImageError(p, "corrupt JPEG: image data before the frame header")
            info.orientation = orientation
            # In entropy-coded data 0xFF is always followed by 0x00 or a marker, so the
            # first FF D9 after the first scan is the end-of-image marker.
            if d.find(b"\xff\xd9", pos + seglen) < 0:
                info.truncated = "no end-of-image marker (the file was cut short)"
            return info
        if pos + seglen > n:
            if info is None:
                raise ImageError(p, "truncated JPEG file: ends inside the header")
            info.truncated = "ends inside a header segment"
            return info
        pos += seglen


def _parse_png(p: Path, d: bytes) -> _HeaderInfo:
    n = len(d)
    if n < 33 or d[12:16] != b"IHDR":
        raise ImageError(p, "corrupt PNG header: no IHDR chunk")
    width, height = _u32be(d, 16), _u32be(d, 20)
    info = _HeaderInfo("PNG", width=width, height=height, bits=d[24])
    pos = 8
    seen_idat = False
    while True:
        if pos + 8 > n:
            info.truncated = "no IEND chunk (the file was cut short)"
            return info
        length = _u32be(d, pos)
        ctype = d[pos + 4 : pos + 8]
        if pos + 12 + length > n:
            info.truncated = f"the {ctype.decode('latin-1', 'replace')} chunk at byte {pos} is cut short"
            return info
        crc = _u32be(d, pos + 8 + length)
        if zlib.crc32(memoryview(d)[pos + 4 : pos + 8 + length]) & 0xFFFFFFFF != crc:
            raise ImageError(p, f"corrupt PNG: checksum mismatch in the {ctype.decode('latin-1', 'replace')} chunk at byte {pos}")
        if ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"eXIf" and info.orientation == 1:
            info.orientation = _exif_orientation(d[pos + 8 : pos + 8 + length])
        elif ctype == b"IEND":
            if not seen_idat:
                raise ImageError(p, "corrupt PNG: no image data (IDAT)")
            return info
        pos += 12 + length


def _parse_bmp(p: Path, d: bytes) -> _HeaderInfo:
    n = len(d)
    if n < 26:
        raise ImageError(p, "truncated BMP file: ends inside the header")
    offbits = int.from_bytes(d[10:14], "little")
    hsize = int.from_bytes(d[14:18], "little")
    if hsize == 12:
        width, height = int.from_bytes(d[18:20], "little"), int.from_bytes(d[20:22], "little")
        bpp, compression, sizeimage = int.from_bytes(d[24:26], "little"), 0, 0
    elif hsize >= 40:
        if n < 38:
            raise ImageError(p, "truncated BMP file: ends inside the header")
        width = int.from_bytes(d[18:22], "little", signed=True)
        height = abs(int.from_bytes(d[22:26], "little", signed=True))  # negative = top-down
        bpp = int.from_bytes(d[28:30], "little")
        compression = int.from_bytes(d[30:34], "little")
        sizeimage = int.from_bytes(d[34:38], "little")
    else:
        raise ImageError(p, f"corrupt BMP header: unknown header size {hsize}")
    info = _HeaderInfo("BMP", width=width, height=height, bits=8)
    if compression in (0, 3, 6):  # uncompressed / bit fields: size follows from the header
        need = offbits + ((max(width, 0) * bpp + 31) // 32) * 4 * height
    else:  # RLE & co.: trust biSizeImage when given
        need = offbits + sizeimage
    if need > n:
        info.truncated = f"pixel data needs {need} bytes, the file has {n}"
    return info


_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_INT_DTYPES = {1: "u1", 3: "u2", 4: "u4", 6: "i1", 8: "i2", 9: "i4", 13: "u4", 16: "u8", 17: "i8", 18: "u8"}


def _tiff_ifd0(d: bytes, wanted: Iterable[int]) -> dict[int, np.ndarray] | None:
    """Integer tags of a TIFF structure's first IFD (also used for EXIF blobs).

    Returns ``None`` when the structure is not readable (bad byte order, IFD out of range).
    """
    if len(d) < 8 or d[:2] not in (b"II", b"MM"):
        return None
    e = "<" if d[:2] == b"II" else ">"
    magic = struct.unpack_from(e + "H", d, 2)[0]
    if magic == 42:
        ifd = struct.unpack_from(e + "I", d, 4)[0]
        count_fmt, entry_size, inline, head = "H", 12, 4, 2
    elif magic == 43 and len(d) >= 16:
        ifd = struct.unpack_from(e + "Q", d, 8)[0]
        count_fmt, entry_size, inline, head = "Q", 20, 8, 8
    else:
        return None
    if ifd + head > len(d):
        return None
    nentries = struct.unpack_from(e + count_fmt, d, ifd)[0]
    wanted = set(wanted)
    tags: dict[int, np.ndarray] = {}
    base = ifd + head
    for i in range(nentries):
        off = base + i * entry_size
        if off + entry_size > len(d):
            return None
        if magic == 42:
            tag, typ, count = struct.unpack_from(e + "HHI", d, off)
            value_off = off + 8
        else:
            tag, typ, count = struct.unpack_from(e + "HHQ", d, off)
            value_off = off + 12
        if tag not in wanted or typ not in _TIFF_INT_DTYPES:
            continue
        nbytes = count * _TIFF_TYPE_SIZES[typ]
        if nbytes > inline:
            value_off = struct.unpack_from(e + ("I" if magic == 42 else "Q"), d, value_off)[0]
        if value_off + nbytes > len(d):
            return None
        tags[tag] = np.frombuffer(d, np.dtype(_TIFF_INT_DTYPES[typ]).newbyteorder(e), count, value_off)
    return tags


def _exif_orientation(tiff_blob: bytes) -> int:
    """Orientation (1..8) from an EXIF blob (TIFF structure), 1 when absent or unreadable."""
    if tiff_blob.startswith(b"Exif\x00\x00"):
        tiff_blob = tiff_blob[6:]
    try:
        tags = _tiff_ifd0(tiff_blob, (0x0112,))
    except struct.error:
        return 1
    if not tags or 0x0112 not in tags or len(tags[0x0112]) == 0:
        return 1
    value = int(tags[0x0112][0])
    return value if 1 <= value <= 8 else 1


def _parse_tiff(p: Path, d: bytes) -> _HeaderInfo:
    try:
        tags = _tiff_ifd0(d, (256, 257, 258, 273, 274, 279, 324, 325, 338))
    except struct.error:
        tags = None
    if tags is None:
        raise ImageError(p, "truncated or corrupt TIFF file: first image directory out of range")
    if 256 not in tags or 257 not in tags:
        raise ImageError(p, "corrupt TIFF header: no image width/height")
    info = _HeaderInfo("TIFF", width=int(tags[256][0]), height=int(tags[257][0]))
    if 258 in tags and len(tags[258]):
        info.bits = int(tags[258].max())
    if 274 in tags and len(tags[274]) and 1 <= int(tags[274][0]) <= 8:
        info.orientation = int(tags[274][0])
    if 338 in tags and len(tags[338]):
        info.tiff_extra_samples = int(tags[338][0])
    for offs, counts in ((273, 279), (324, 325)):
        if offs in tags and counts in tags and len(tags[offs]) and len(tags[offs]) == len(tags[counts]):
            end = int((tags[offs].astype(np.uint64) + tags[counts].astype(np.uint64)).max())
            if end > len(d):
                info.truncated = f"image data runs to byte {end}, the file has {len(d)}"
    return info


def _parse_webp(p: Path, d: bytes) -> _HeaderInfo:
    n = len(d)
    riff_size = int.from_bytes(d[4:8], "little")
    pos = 12
    info: _HeaderInfo | None = None
    orientation = 1
    while pos + 8 <= n:
        fourcc = d[pos : pos + 4]
        size = int.from_bytes(d[pos + 4 : pos + 8], "little")
        body = d[pos + 8 : pos + 8 + (size if fourcc == b"EXIF" else min(size, 16))]
        if info is None:
            if fourcc == b"VP8 ":
                if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
                    raise ImageError(p, "corrupt WebP header: bad VP8 frame header")
                info = _HeaderInfo(
                    "WebP",
                    width=int.from_bytes(body[6:8], "little") & 0x3FFF,
                    height=int.from_bytes(body[8:10], "little") & 0x3FFF,
                )
            elif fourcc == b"VP8L":
                if len(body) < 5 or body[0] != 0x2F:
                    raise ImageError(p, "corrupt WebP header: bad VP8L header")
                bits = int.from_bytes(body[1:5], "little")
                info = _HeaderInfo("WebP", width=(bits & 0x3FFF) + 1, height=((bits >> 14) & 0x3FFF) + 1)
            elif fourcc == b"VP8X":
                if len(body) < 10:
                    raise ImageError(p, "corrupt WebP header: bad VP8X header")
                info = _HeaderInfo(
                    "WebP",
                    width=int.from_bytes(body[4:7], "little") + 1,
                    height=int.from_bytes(body[7:10], "little") + 1,
                )
            else:
                raise ImageError(p, f"corrupt WebP header: unexpected first chunk {fourcc!r}")
        elif fourcc == b"EXIF":
            orientation = _exif_orientation(body)
        pos += 8 + size + (size & 1)
    if info is None:
        raise ImageError(p, "truncated WebP file: ends inside the header")
    info.orientation = orientation
    if riff_size + 8 > n or pos > n + 1:  # (+1: a final pad byte some writers omit)
        info.truncated = f"the RIFF header declares {riff_size + 8} bytes, the file has {n}"
    return info


_PARSERS = {"JPEG": _parse_jpeg, "PNG": _parse_png, "BMP": _parse_bmp, "TIFF": _parse_tiff, "WebP": _parse_webp}


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
