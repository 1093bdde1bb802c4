"""Fuzzing the two things a stranger hands us: image files and model metadata.

Real files (a photo as JPEG with EXIF, PNG with eXIf and text, TIFF with an orientation
tag, lossless WebP with EXIF, BMP) are mutated by hypothesis (bytes flipped, 16/32-bit
fields overwritten with extreme values, cut short, bytes inserted), mostly in their
headers, where hand-written parsing once let an ``IndexError`` out.  The loader must give
a proper RGB image or raise :class:`ImageError`, nothing else, under an address-space
limit.  Metadata values are mutated the same way (JSON values of every type, text cut or
spliced): reading them must give a usable contract or raise :class:`ModelError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from onnx_explain import contract  # noqa: E402
from onnx_explain.errors import ModelError  # noqa: E402
from onnx_explain.images import ImageError, load_image  # noqa: E402
from onnx_explain.preprocess import check_preprocess, preprocess  # noqa: E402

MAX_PIXELS = 4_000_000  # the fuzzed loader's cap: a legitimate decode stays small
MEMORY_MARGIN = 1536 << 20  # address space allowed on top of what the process has
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


@contextlib.contextmanager
def memory_limit(margin: int = MEMORY_MARGIN):
    """Lower the soft address-space limit to what the process has plus ``margin``: an
    allocation a hostile header asks for fails instead of swapping the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + margin
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def real_files(photos) -> dict[str, bytes]:
    from PIL import Image

    bgr = cv2.resize(cv2.imread(str(photos[0])), (64, 48), interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {}
    for fmt, kwargs in (("JPEG", {"quality": 90, "exif": exif}), ("PNG", {"exif": exif}),
                        ("TIFF", {"tiffinfo": {274: 3}}), ("WEBP", {"lossless": True, "exif": exif}),
                        ("BMP", {})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, **kwargs)
        files[fmt] = buf.getvalue()
    ok, prog = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    files["JPEG-progressive"] = prog.tobytes()
    for data in files.values():  # each base file loads as it is
        assert load_image(_write(data)).rgb.shape in ((48, 64, 3), (64, 48, 3))
    return files


_SCRATCH: dict[str, object] = {}


def _write(data: bytes):
    import tempfile
    from pathlib import Path

    if "dir" not in _SCRATCH:
        _SCRATCH["dir"] = tempfile.TemporaryDirectory(prefix="onnx-explain-fuzz-")
    path = Path(_SCRATCH["dir"].name) / "input.img"
    path.write_bytes(data)
    return path


EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def header_fields(fmt: str, data: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of the header fields of a (valid) base file, the most fragile
    first: counts, sizes, lengths, offsets, types.  Overwriting exactly these is where
    parsers break (a TIFF width tag with count 0 once let an IndexError out)."""
    import struct

    fields: list[tuple[int, int]] = []
    if fmt == "TIFF":
        e = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack_from(e + "I", data, 4)[0]
        entries = [ifd + 2 + 12 * i for i in range(struct.unpack_from(e + "H", data, ifd)[0])]
        fields += [(x + 4, 4) for x in entries]  # counts
        fields += [(x + 8, 4) for x in entries]  # values / offsets
        fields += [(x + 2, 2) for x in entries]  # types
        fields += [(ifd, 2), (4, 4)]  # entry count, first directory
    elif fmt == "PNG":
        fields += [(16, 4), (20, 4), (24, 1), (25, 1), (8, 4)]  # IHDR width, height, depth, colour type
        pos = 8
        while pos + 8 <= len(data):
            fields.append((pos, 4))  # chunk lengths
            pos += 12 + struct.unpack_from(">I", data, pos)[0]
    elif fmt.startswith("JPEG"):
        pos, lengths = 2, []
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
            lengths.append((pos + 2, 2))
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                fields += [(pos + 5, 2), (pos + 7, 2), (pos + 9, 1), (pos + 4, 1)]  # height, width, components
            if marker == 0xDA:
                fields += [(pos + 4, 1)]  # components in the scan
                break
            pos += 2 + length
        fields += lengths
    elif fmt == "BMP":
        fields += [(18, 4), (22, 4), (28, 2), (30, 4), (10, 4), (14, 4), (34, 4), (46, 4), (2, 4)]
    elif fmt == "WEBP":
        pos = 12
        while pos + 8 <= len(data):
            size = struct.unpack_from("<I", data, pos + 4)[0]
            if data[pos : pos + 4] == b"VP8X":
                fields += [(pos + 12, 3), (pos + 15, 3), (pos + 8, 1)]  # canvas, flags
            fields.append((pos + 4, 4))
            pos += 8 + size + (size & 1)
        fields.append((4, 4))
    return [(at, size) for at, size in fields if at + size <= len(data)]


position = st.one_of(st.integers(0, 160), st.floats(0.0, 1.0))  # mostly the header, anywhere too
FIELD_VALUES = [0, 0xFFFFFFFF, 1, 0x7FFFFFFF, 0xFFFF, 0x8000, 0x80000000, 2, 0xFF]
field = st.tuples(st.just("field"), st.integers(0, 63), st.sampled_from(FIELD_VALUES))
mutation = st.one_of(
    field, field, field,  # weighted: most mutations hit a header field
    st.tuples(st.just("byte"), position, st.integers(0, 255)),
    st.tuples(st.just("u16"), position, st.sampled_from(EXTREMES + [4, 8, 16]), st.sampled_from("<>")),
    st.tuples(st.just("u32"), position, st.sampled_from(EXTREMES + [30000, 65500]), st.sampled_from("<>")),
    st.tuples(st.just("cut"), position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=12)),
)


def _mutate(data: bytes, mutations, fields: list[tuple[int, int]]) -> bytes:
    d = bytearray(data)
    endian = "little" if data[:2] in (b"II", b"BM") or data[:4] == b"RIFF" else "big"
    for m in mutations:
        kind, pos = m[0], m[1]
        if not d:
            break
        if kind == "field":  # a header field of the base file set to an extreme value
            at, size = fields[pos % len(fields)]
            if at + size <= len(d):
                d[at : at + size] = (m[2] & ((1 << (8 * size)) - 1)).to_bytes(size, endian)
            continue
        at = int(pos * len(d)) if isinstance(pos, float) else pos
        at = min(at, max(len(d) - 1, 0))
        if kind == "byte":
            d[at] = m[2]
        elif kind in ("u16", "u32"):
            size = 2 if kind == "u16" else 4
            value = m[2] & (0xFFFF if size == 2 else 0xFFFFFFFF)
            d[at : at + size] = value.to_bytes(size, "little" if m[3] == "<" else "big")
        elif kind == "cut":
            del d[at:]
        else:
            d[at:at] = m[2]
    return bytes(d)


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG-progressive", "PNG", "TIFF", "WEBP", "BMP"])
def test_mutated_image_files_give_an_image_or_an_image_error(real_files, fmt):
    base = real_files[fmt]
    fields = header_fields(fmt, base)
    assert len(fields) >= 3
    seen = {"ok": 0, "refused": 0}

    @settings(max_examples=200, **SETTINGS)
    @given(st.lists(mutation, min_size=1, max_size=5))
    def check(mutations):
        path = _write(_mutate(base, mutations, fields))
        try:
            image = load_image(path, max_pixels=MAX_PIXELS)
        except ImageError as err:  # the only error the loader may raise
            text = str(err)
            assert "\n" not in text and text.startswith(f"{path}: "), text
            seen["refused"] += 1
            return
        rgb = image.rgb
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
        seen["ok"] += 1

    with memory_limit():
        check()
    assert seen["refused"] > 0  # the mutations do hit


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
PRE_KEYS = ["size", "layout", "color", "scale", "mean", "std", "resize", "resize_shorter", "pad_value", "pad_align"]
VALID = json.loads(contract.Preprocess(size=(32, 40), resize="center_crop", resize_shorter=36).to_json())


def _text_mutations(text: str, cuts) -> str:
    for at, insert in cuts:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + 1:]
    return text


@settings(max_examples=150, **SETTINGS)
@given(
    changes=st.dictionaries(st.sampled_from(PRE_KEYS), json_values, max_size=3),
    labels=st.one_of(st.none(), json_values, st.lists(st.text(max_size=5), max_size=5)),
    cam=st.one_of(st.none(), json_values),
    cuts=st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["", "{", "]", "NaN", "1e999", '"', ",", "-"])),
                  max_size=2),
)
def test_mutated_metadata_gives_a_usable_contract_or_a_model_error(changes, labels, cam, cuts):
    pre = dict(VALID, **changes)
    props = {contract.METADATA_PREFIX + "version": "1",
             contract.METADATA_PREFIX + "preprocess": _text_mutations(json.dumps(pre), cuts)}
    if labels is not None:
        props[contract.METADATA_PREFIX + "labels"] = json.dumps(labels)
    if cam is not None:
        props[contract.METADATA_PREFIX + "cam"] = json.dumps(cam)
    try:
        meta = contract.ExplainMetadata.from_props(props, "fuzz.onnx")
    except ModelError as err:
        text = str(err)
        assert text.startswith("fuzz.onnx: metadata onnx_explain.") and "\n" not in text, text
        return
    p = meta.preprocess
    h, w = check_preprocess(p)  # what the loader accepted, the runtime can follow
    assert 1 <= h <= contract.MAX_SIDE and 1 <= w <= contract.MAX_SIDE
    assert meta.labels is None or all(isinstance(v, str) for v in meta.labels)
    if h * w <= 256 * 256 and (p.resize_shorter or 0) <= 512:
        x, _ = preprocess(np.full((20, 30, 3), 200, np.uint8), p)
        assert np.isfinite(x).all()
