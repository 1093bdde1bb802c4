"""Image loading: formats, colour handling, EXIF orientation, and one clear error per bad file."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnx_explain import images
from onnx_explain.images import ImageError, LoadedImage, iter_image_paths, load_image

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- hand-made files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None, extra: list[bytes] = ()) -> bytes:
    """A PNG built by hand; ``rows`` is the raw (unfiltered) pixel data, row by row."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if rows is None:
        idat = zlib.compress(b"\x00" * 16)  # deliberately short
    else:
        stride = len(rows) // height
        idat = zlib.compress(b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def exif_blob(orientation: int, endian: str = "MM") -> bytes:
    """A minimal EXIF (TIFF-structured) blob holding only the orientation tag."""
    e = ">" if endian == "MM" else "<"
    return (
        endian.encode()
        + struct.pack(e + "HI", 42, 8)
        + struct.pack(e + "H", 1)
        + struct.pack(e + "HHI", 0x0112, 3, 1)
        + struct.pack(e + "HH", orientation, 0)
        + struct.pack(e + "I", 0)
    )


def jpeg_with_orientation(bgr: np.ndarray, orientation: int, endian: str = "MM") -> bytes:
    ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    jpg = enc.tobytes()
    app1 = b"Exif\x00\x00" + exif_blob(orientation, endian)
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def make_tiff(rgb: np.ndarray, orientation: int | None = None) -> bytes:
    """Uncompressed little-endian RGB TIFF, directory first and pixel strip last."""
    h, w, _ = rgb.shape
    tags = [
        (256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, rgb.nbytes),
    ]
    if orientation is not None:
        tags.append((274, 3, 1, orientation))
    tags.sort()
    ifd_size = 2 + 12 * len(tags) + 4
    data_off = 8 + ifd_size + 6  # + BitsPerSample would need 3 values; we use 1 (allowed by readers)
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        if tag == 273:
            value = data_off
        if typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0) + b"\x00" * 6
    assert len(out) == data_off
    return out + rgb.tobytes()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "ext,params,tolerance",
    [
        (".png", [], 0),
        (".bmp", [], 0),
        (".tif", [], 0),
        (".tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 1], 0),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], 0),  # lossless
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100], 4),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 90], 12),  # lossy VP8 header
    ],
)
def test_round_trip_all_formats(tmp_path, ext, params, tolerance):
    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[:12, :20] = (250, 10, 10)  # red block top-left: catches RGB/BGR swaps and flips
    rgb[12:, 20:] = (10, 240, 20)
    rgb[:, 38:] = (10, 20, 230)
    p = tmp_path / f"img{ext}"
    assert cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    im = load_image(p)
    assert im.rgb.dtype == np.uint8 and im.rgb.shape == (24, 40, 3)
    assert im.original_size == (24, 40)
    assert im.path == p
    # Same pixels as OpenCV's own decoder, in RGB order.
    np.testing.assert_array_equal(im.rgb, cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1])
    if tolerance == 0:
        np.testing.assert_array_equal(im.rgb, rgb)
    else:  # lossy: compare away from colour edges
        assert np.abs(im.rgb[2:10, 2:16].astype(int) - rgb[2:10, 2:16]).max() <= tolerance
        assert np.abs(im.rgb[14:22, 22:34].astype(int) - rgb[14:22, 22:34]).max() <= tolerance


def test_format_from_content_not_extension(tmp_path):
    rgb = RNG.integers(0, 256, (16, 16, 3), np.uint8)
    ok, enc = cv2.imencode(".png", rgb[:, :, ::-1])
    p = write(tmp_path, "really_png.jpg", enc.tobytes())
    im = load_image(p)
    assert im.format == "PNG"
    np.testing.assert_array_equal(im.rgb, rgb)


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    p = tmp_path / "g.png"
    cv2.imwrite(str(p), gray)
    im = load_image(p)
    for c in range(3):
        np.testing.assert_array_equal(im.rgb[:, :, c], gray)


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([0, 128, 129, 257, 32767, 32896, 40000, 65279, 65535], np.uint16)
    expected = np.array([0, 0, 1, 1, 127, 128, 156, 254, 255], np.uint8)  # round(v * 255 / 65535)
    np.testing.assert_array_equal(np.rint(values / 257.0).astype(np.uint8), expected)
    gray = np.tile(values, (8, 1))
    p = tmp_path / "g16.png"
    cv2.imwrite(str(p), gray)
    im = load_image(p)
    assert im.bit_depth == 16
    np.testing.assert_array_equal(im.rgb[0, :, 0], expected)
    np.testing.assert_array_equal(im.rgb[:, :, 0], im.rgb[:, :, 2])

    # Colour, and the same through TIFF: channel order must survive the scaling.
    rgb16 = np.zeros((8, 9, 3), np.uint16)
    rgb16[..., 0] = values
    rgb16[..., 1] = 65535 - values
    rgb16[..., 2] = 40000
    for ext in (".png", ".tif"):
        p = tmp_path / f"c16{ext}"
        cv2.imwrite(str(p), rgb16[:, :, ::-1])
        im = load_image(p)
        np.testing.assert_array_equal(im.rgb[0, :, 0], expected, err_msg=ext)
        np.testing.assert_array_equal(im.rgb[0, :, 1], np.rint((65535 - values) / 257.0), err_msg=ext)
        assert (im.rgb[..., 2] == 156).all(), ext


def test_palette_png_decoded_to_palette_colours(tmp_path):
    palette = [(255, 0, 0), (0, 128, 0), (10, 20, 250), (200, 200, 7)]
    idx = (np.arange(8 * 8).reshape(8, 8) % 4).astype(np.uint8)
    plte = png_chunk(b"PLTE", bytes(v for c in palette for v in c))
    p = write(tmp_path, "pal.png", make_png(8, 8, 8, 3, idx.tobytes(), [plte]))
    im = load_image(p)
    expected = np.array(palette, np.uint8)[idx]
    np.testing.assert_array_equal(im.rgb, expected)
    assert not im.had_alpha


def test_palette_png_with_transparency_composited_on_white(tmp_path):
    palette = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    alphas = bytes([255, 0, 128])  # tRNS: opaque red, transparent blue, half green
    idx = (np.arange(8 * 8).reshape(8, 8) % 3).astype(np.uint8)
    extra = [png_chunk(b"PLTE", bytes(v for c in palette for v in c)), png_chunk(b"tRNS", alphas)]
    p = write(tmp_path, "palt.png", make_png(8, 8, 8, 3, idx.tobytes(), extra))
    im = load_image(p)
    assert im.had_alpha
    lut = np.array([(255, 0, 0), (255, 255, 255), (127, 255, 127)], np.uint8)  # 128/255 green over white
    np.testing.assert_array_equal(im.rgb, lut[idx])


def test_rgba_composited_over_background(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[..., 2] = 50
    rgba[:, :4, 3] = 255
    rgba[:, 4:6, 3] = 0
    rgba[:, 6:, 3] = 51  # 20 %
    p = tmp_path / "rgba.png"
    cv2.imwrite(str(p), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    white = load_image(p).rgb
    np.testing.assert_array_equal(white[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(white[0, 4], (255, 255, 255))
    # 0.2 * c + 0.8 * 255
    np.testing.assert_array_equal(white[0, 6], (244, 224, 214))
    black = load_image(p, background=(0, 0, 0)).rgb
    np.testing.assert_array_equal(black[0, 4], (0, 0, 0))
    np.testing.assert_array_equal(black[0, 6], (40, 20, 10))


def test_gray_alpha_png(tmp_path):
    ga = np.zeros(8 * 8 * 2, np.uint8)
    ga[0::2] = 90  # gray
    ga[1::2] = 0  # fully transparent
    ga[2 * 8 * 4 :: 2] = 90
    ga[2 * 8 * 4 + 1 :: 2] = 255  # bottom half opaque
    p = write(tmp_path, "ga.png", make_png(8, 8, 8, 4, ga.tobytes()))
    im = load_image(p)
    assert (im.rgb[:4] == 255).all()
    assert (im.rgb[4:] == 90).all()


def test_tiff_rgba_alpha_is_composited_once(tmp_path):
    """TIFF alpha comes straight (cv2.imwrite, no ExtraSamples tag) or premultiplied by
    libtiff (ExtraSamples = unassociated, as Pillow writes): both give the PNG's result."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[...] = (200, 100, 50, 51)
    png, tif = tmp_path / "a.png", tmp_path / "a.tif"
    for p in (png, tif):
        cv2.imwrite(str(p), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    a, b = load_image(png).rgb, load_image(tif).rgb
    np.testing.assert_array_equal(a[0, 0], (244, 224, 214))
    np.testing.assert_array_equal(a, b)
    Image = pytest.importorskip("PIL.Image")
    pil = tmp_path / "pil.tif"
    Image.fromarray(rgba, "RGBA").save(pil)
    assert np.abs(load_image(pil).rgb.astype(int) - a).max() <= 1


# --------------------------------------------------------------------------- orientation


def _marker_bgr() -> np.ndarray:
    """40 x 60 (h x w): a red block at the stored top-left, green at the stored bottom row."""
    bgr = np.full((40, 60, 3), 128, np.uint8)
    bgr[:16, :16] = (0, 0, 255)
    bgr[-8:, 24:36] = (0, 255, 0)
    return bgr


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_imread_color(tmp_path, orientation):
    p = write(tmp_path, f"o{orientation}.jpg", jpeg_with_orientation(_marker_bgr(), orientation))
    im = load_image(p)
    assert im.orientation == orientation
    reference = cv2.imread(str(p), cv2.IMREAD_COLOR)  # applies EXIF orientation
    assert reference is not None
    np.testing.assert_array_equal(im.rgb, reference[:, :, ::-1])
    # Independent check of where the stored top-left red block ends up.
    red = np.argwhere((im.rgb[..., 0] > 200) & (im.rgb[..., 1] < 60))
    cy, cx = red.mean(axis=0)
    h, w = im.original_size
    assert (h, w) == ((40, 60) if orientation <= 4 else (60, 40))
    top = cy < h / 2
    left = cx < w / 2
    expected_corner = {1: (True, True), 2: (True, False), 3: (False, False), 4: (False, True),
                       5: (True, True), 6: (True, False), 7: (False, False), 8: (False, True)}
    assert (top, left) == expected_corner[orientation]


def test_exif_little_endian_and_rotation_sense(tmp_path):
    """Orientation 6 = stored rotated 90 degrees counter-clockwise: display = rotate clockwise."""
    bgr = _marker_bgr()
    p = write(tmp_path, "le6.jpg", jpeg_with_orientation(bgr, 6, endian="II"))
    im = load_image(p)
    stored = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(im.rgb, np.rot90(stored, k=-1))


def test_png_exif_chunk_orientation(tmp_path):
    rgb = _marker_bgr()[:, :, ::-1].copy()
    h, w, _ = rgb.shape
    data = make_png(w, h, 8, 2, rgb.tobytes(), [png_chunk(b"eXIf", exif_blob(8))])
    im = load_image(write(tmp_path, "o8.png", data))
    assert im.orientation == 8
    np.testing.assert_array_equal(im.rgb, np.rot90(rgb, k=1))  # rotate 90 CCW for display


def test_tiff_orientation_applied_once(tmp_path):
    rgb = _marker_bgr()[:, :, ::-1].copy()
    p = write(tmp_path, "o6.tif", make_tiff(rgb, orientation=6))
    plain = load_image(write(tmp_path, "o1.tif", make_tiff(rgb)))
    np.testing.assert_array_equal(plain.rgb, rgb)
    im = load_image(p)
    np.testing.assert_array_equal(im.rgb, np.rot90(rgb, k=-1))


def test_orientation_agrees_with_pillow(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image, ImageOps

    rgb = _marker_bgr()[:, :, ::-1].copy()
    for ext, kw in ((".webp", {"lossless": True}), (".png", {}), (".jpg", {"quality": 95})):
        for o in (2, 5, 6, 7):
            exif = Image.Exif()
            exif[0x0112] = o
            p = tmp_path / f"pil{o}{ext}"
            Image.fromarray(rgb).save(p, exif=exif, **kw)
            ref = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
            got = load_image(p).rgb
            assert got.shape == ref.shape, (ext, o)
            assert np.abs(got.astype(int) - ref).max() <= 2, (ext, o)


# --------------------------------------------------------------------------- errors


def _assert_image_error(exc_info, path, *words):
    err = exc_info.value
    text = str(err)
    assert "\n" not in text
    assert text.startswith(str(path) + ": "), text
    assert err.path == Path(path)
    for word in words:
        assert word in text.lower(), text


def _good_bytes(ext: str, shape=(32, 48, 3), params=()) -> bytes:
    ok, enc = cv2.imencode(ext, RNG.integers(0, 256, shape, np.uint8), list(params))
    assert ok
    return enc.tobytes()


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "no such file")


def test_empty_file(tmp_path):
    p = write(tmp_path, "empty.png", b"")
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "empty")


def test_directory(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path)
    _assert_image_error(e, tmp_path, "directory")


def test_text_file_named_jpg(tmp_path):
    p = write(tmp_path, "notes.jpg", b"this is not a picture\nreally\n")
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "not an image", "text")


def test_binary_garbage_and_other_formats(tmp_path):
    p = write(tmp_path, "noise.png", bytes(RNG.integers(0, 256, 500, np.uint8)) + b"\x00")
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "not an image")
    p = write(tmp_path, "anim.jpg", b"GIF89a" + b"\x00" * 100)
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "gif", "not a supported")


@pytest.mark.parametrize(
    "ext,cut",
    [
        (".jpg", 0.5),
        (".jpg", -2),  # only the end-of-image marker missing
        (".png", 0.5),
        (".png", -12),  # only the IEND chunk missing
        (".bmp", 0.9),
        (".tif", 0.5),
        (".webp", 0.7),
    ],
)
def test_truncated_files(tmp_path, ext, cut):
    data = _good_bytes(ext, params=[cv2.IMWRITE_TIFF_COMPRESSION, 1] if ext == ".tif" else [])
    n = int(len(data) * cut) if cut > 0 else len(data) + cut
    p = write(tmp_path, f"cut{ext}", data[:n])
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "truncated")


def test_truncated_tiff_strip(tmp_path):
    """Directory intact, pixel strip cut: caught from the strip offsets/byte counts."""
    data = make_tiff(RNG.integers(0, 256, (16, 16, 3), np.uint8))
    p = write(tmp_path, "strip.tif", data[:-100])
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "truncated")


def test_corrupt_png_checksum(tmp_path):
    data = bytearray(_good_bytes(".png"))
    idat = data.find(b"IDAT")
    data[idat + 30] ^= 0xFF
    p = write(tmp_path, "flip.png", bytes(data))
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "corrupt png", "checksum", "idat")


def test_text_that_starts_like_a_bitmap(tmp_path):
    p = write(tmp_path, "car.bmp", b"BMW 320d, 2019, 120000 km, one owner\n")
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "not an image", "text")


def test_progressive_jpeg_and_its_truncation(tmp_path):
    data = _good_bytes(".jpg", params=[cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert data.count(b"\xff\xda") > 1  # several scans
    ok = write(tmp_path, "prog.jpg", data)
    np.testing.assert_array_equal(load_image(ok).rgb, cv2.imread(str(ok))[:, :, ::-1])
    p = write(tmp_path, "progcut.jpg", data[: len(data) - 300])
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "truncated", "end-of-image")


def test_tiff_variants(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = RNG.integers(0, 256, (96, 80, 3), np.uint8)
    for name, kw in (("big.tif", {"bigtiff": True}), ("tiled.tif", {"tile": (32, 32)}), ("zip.tif", {"compression": "zlib"})):
        p = tmp_path / name
        tifffile.imwrite(p, rgb, **kw)
        np.testing.assert_array_equal(load_image(p).rgb, rgb, err_msg=name)
    data = (tmp_path / "tiled.tif").read_bytes()
    p = write(tmp_path, "tiledcut.tif", data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "truncated")
    pages = tmp_path / "pages.tif"
    tifffile.imwrite(pages, np.stack([rgb, rgb[::-1]]))
    np.testing.assert_array_equal(load_image(pages).rgb, rgb)  # first page


def test_opencv_log_level_restored(tmp_path):
    level = cv2.utils.logging.getLogLevel()
    load_image(write(tmp_path, "ok.png", _good_bytes(".png")))
    assert cv2.utils.logging.getLogLevel() == level


def test_corrupt_jpeg_data(tmp_path):
    data = bytearray(_good_bytes(".jpg"))
    sos = data.find(b"\xff\xda")
    data[sos + 20 : -2] = b"\xff\x00" * ((len(data) - 2 - sos - 20) // 2) + b"\x00" * ((len(data) - sos - 22) % 2)
    p = write(tmp_path, "bad.jpg", bytes(data))
    try:
        im = load_image(p)
    except ImageError as exc:  # OpenCV may or may not flag garbage scan data
        assert str(exc).startswith(str(p) + ": ")
    else:
        assert im.rgb.shape == (32, 48, 3)


def test_too_small(tmp_path):
    p = tmp_path / "pixel.png"
    cv2.imwrite(str(p), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "too small", "1x1", "8x8")
    q = tmp_path / "small.png"
    cv2.imwrite(str(q), np.zeros((12, 30, 3), np.uint8))
    assert load_image(q).original_size == (12, 30)
    with pytest.raises(ImageError) as e:
        load_image(q, min_side=16)
    _assert_image_error(e, q, "too small", "30x12")
    assert load_image(p, min_side=1).original_size == (1, 1)


def test_huge_png_header_refused_before_decoding(tmp_path, monkeypatch):
    data = make_png(30000, 30000, 8, 2)  # IHDR says 30000x30000, IDAT holds 16 bytes
    assert len(data) < 100
    p = write(tmp_path, "bomb.png", data)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoder must not run")

    monkeypatch.setattr(images.cv2, "imdecode", no_decode)
    t0 = time.perf_counter()
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert time.perf_counter() - t0 < 0.5
    _assert_image_error(e, p, "too large", "30000x30000", "900.0 megapixels")


def _patch_tiff_size(data: bytes, width: int, height: int) -> bytes:
    d = bytearray(data)
    e = "<" if d[:2] == b"II" else ">"
    ifd = struct.unpack_from(e + "I", d, 4)[0]
    for i in range(struct.unpack_from(e + "H", d, ifd)[0]):
        off = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from(e + "HH", d, off)
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:
                struct.pack_into(e + "H", d, off + 8, value)
            else:
                struct.pack_into(e + "I", d, off + 8, value)
    return bytes(d)


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    d = bytearray(data)
    sof = d.find(b"\xff\xc0")
    struct.pack_into(">HH", d, sof + 5, height, width)
    return bytes(d)


def _patch_bmp_size(data: bytes, width: int, height: int) -> bytes:
    d = bytearray(data)
    struct.pack_into("<ii", d, 18, width, -height)
    return bytes(d)


def _patch_webp_vp8_size(data: bytes, width: int, height: int) -> bytes:
    d = bytearray(data)
    assert d[12:16] == b"VP8 "
    struct.pack_into("<HH", d, 20 + 6, width, height)
    return bytes(d)


@pytest.mark.parametrize(
    "ext,patch,size,params",
    [
        (".jpg", _patch_jpeg_size, (30000, 30000), []),
        (".bmp", _patch_bmp_size, (30000, 30000), []),
        (".tif", _patch_tiff_size, (30000, 30000), []),
        (".webp", _patch_webp_vp8_size, (16000, 16000), [cv2.IMWRITE_WEBP_QUALITY, 80]),
    ],
)
def test_huge_headers_of_every_format_refused(tmp_path, monkeypatch, ext, patch, size, params):
    p = write(tmp_path, f"big{ext}", patch(_good_bytes(ext, params=params), *size))
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a, **k: pytest.fail("decoder must not run"))
    with pytest.raises(ImageError) as e:
        load_image(p)
    _assert_image_error(e, p, "too large", f"{size[0]}x{size[1]}")


def test_pixel_limit_is_configurable(tmp_path):
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ImageError) as e:
        load_image(p, max_pixels=1999)
    _assert_image_error(e, p, "too large", "50x40")
    assert load_image(p, max_pixels=2000).original_size == (40, 50)
    with pytest.raises(ImageError) as e:
        load_image(p, max_file_bytes=10)
    _assert_image_error(e, p, "file too large")


def test_error_has_path_and_problem_attributes(tmp_path):
    err = ImageError(tmp_path / "a.jpg", "multi\nline   problem")
    assert err.problem == "multi line problem"
    assert str(err) == f"{tmp_path / 'a.jpg'}: multi line problem"
    assert str(ImageError(None, "bad")) == "<array>: bad"


def test_loaded_image_from_array():
    rgb = RNG.integers(0, 256, (9, 10, 3), np.uint8)
    im = LoadedImage.from_array(rgb)
    assert im.original_size == (9, 10) and im.path is None
    gray = LoadedImage.from_array(rgb[:, :, 0])
    np.testing.assert_array_equal(gray.rgb[:, :, 2], rgb[:, :, 0])
    with pytest.raises(ValueError):
        LoadedImage.from_array(rgb.astype(np.float32))


# --------------------------------------------------------------------------- input expansion


def test_iter_image_paths(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.jpg", "sub/z.png"):
        (d / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    explicit = tmp_path / "file.dat"
    explicit.write_bytes(b"x")
    missing = tmp_path / "missing.jpg"
    pattern = str(d / "*.png")
    nothing = str(tmp_path / "*.gif")

    paths, problems = iter_image_paths([str(d), str(missing), pattern, str(explicit), str(tmp_path / "empty"), nothing])
    assert paths == [d / "a.png", d / "b.JPG", d / "c.webp", explicit]  # a.png once, though named twice
    assert [p.path for p in problems] == [missing, tmp_path / "empty", Path(nothing)]
    assert "no such file" in problems[0].problem
    assert "no image files" in problems[1].problem
    assert "matches no image files" in problems[2].problem

    rec = iter_image_paths([d], recursive=True)
    assert rec.paths == [d / "a.png", d / "b.JPG", d / "c.webp", d / "sub" / "z.png"]
    assert rec.problems == []
    globbed = iter_image_paths([str(d / "**" / "*.png")])
    assert globbed.paths == [d / "a.png", d / "sub" / "z.png"]


def test_iter_then_load_reports_every_bad_input(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((10, 10, 3), np.uint8))
    write(tmp_path, "bad.jpg", b"hello")
    found = iter_image_paths([str(tmp_path), str(tmp_path / "gone.png")])
    errors = [str(p) for p in found.problems]
    loaded = []
    for path in found.paths:
        try:
            loaded.append(load_image(path))
        except ImageError as e:
            errors.append(str(e))
    assert [im.path.name for im in loaded] == ["good.png"]
    assert len(errors) == 2
    assert errors[0].startswith(str(tmp_path / "gone.png"))
    assert errors[1].startswith(str(tmp_path / "bad.jpg"))
