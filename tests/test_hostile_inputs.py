"""Hostile and large inputs: bounded memory, one bad item never stops a batch, nothing trusted.

Each test pins one behaviour of issue 9 with exact expectations: peak memory that does not
grow with the number of images, every bad item named with the rest done, model files and
metadata checked before anything is allocated for them, terminal and JSON output that no
file name or label can forge, bounded numbers, and the small things (stale temporaries,
Ctrl-C, decoder chatter, one session build per graph under threads, per-item API errors).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_explain import contract
from onnx_explain.command.cli import main
from onnx_explain.explainer import Explainer, Explanation, ItemError
from onnx_explain.images import ImageError, load_image
from onnx_explain.outputs import TMP_SUFFIX, lock_folder
from test_images import make_tiff

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) if not isinstance(a, bytes) else a for a in args],
                              catch_exceptions=False)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _photo(photos, size=(120, 80)) -> np.ndarray:
    return cv2.resize(cv2.imread(str(photos[0])), size, interpolation=cv2.INTER_AREA)


def _with_metadata(src: Path, dst: Path, **values: str) -> Path:
    """A copy of an explain model with some ``onnx_explain.*`` metadata values replaced."""
    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        full = contract.METADATA_PREFIX + key
        (props.get(full) or model.metadata_props.add(key=full)).value = value
    onnx.save(model, str(dst))
    return dst


def _peak_rss_mb(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Run the CLI in a child process; its peak resident memory in MB.

    Read by the child itself, at exit, from its own address space (``VmHWM``), not from
    ``wait4``'s ``ru_maxrss``: a child started with vfork records at exec the peak of the
    parent's memory it borrowed, i.e. the pytest worker's, whatever the CLI itself used.
    """
    peak_file = cwd / f"peak-{os.getpid()}-{time.monotonic_ns()}.txt"
    code = ("import atexit, sys\n"
            "def peak():\n"
            "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            f"    open({str(peak_file)!r}, 'w').write(hwm.split()[1])\n"
            "atexit.register(peak)\n"
            "from onnx_explain.command.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True)
    peak_kb = float(peak_file.read_text())
    peak_file.unlink()
    return peak_kb / 1024, subprocess.CompletedProcess(args, proc.returncode, proc.stdout, proc.stderr)


# ----------------------------------------------------------------------------- 1. memory


def test_peak_memory_does_not_grow_with_the_number_of_images(tiny, tmp_path):
    """8 and 32 photos of 2400x1600, in batches of 4: the peak is the same (every image used
    to be decoded first and kept to the end: +45 MB per photo here). Both runs have several
    batches: the first batch's decoding overlaps the next one's, a fixed cost once."""
    rng = np.random.default_rng(5)
    base = cv2.resize(rng.integers(0, 256, (40, 60, 3), np.uint8), (2400, 1600), interpolation=cv2.INTER_CUBIC)
    ok, enc = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    peaks = {}
    for n in (8, 32):
        folder = tmp_path / f"in{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"p{i:03d}.jpg").write_bytes(enc.tobytes())
        for command in ("explain", "score"):
            extra = ["--out", tmp_path / f"out-{command}-{n}", "--no-npy"] if command == "explain" else []
            peak, r = _peak_rss_mb([command, str(tiny.explain), str(folder), "--device", "cpu", "--threads", "1",
                                    "--batch-size", "4", *map(str, extra)], tmp_path)
            assert r.returncode == 0, r.stderr.decode()
            peaks[command, n] = peak
    for command in ("explain", "score"):
        assert peaks[command, 32] < 1.15 * peaks[command, 8] + 20, peaks


def test_api_decodes_a_batch_only_when_it_comes(tiny, good_image, monkeypatch):
    import onnx_explain.explainer as explainer

    decoded = []
    real = explainer.load_image

    def counting(path, **kwargs):
        decoded.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(explainer, "load_image", counting)
    with Explainer(tiny.explain, device="cpu") as ex:
        it = ex.iter_explain([good_image] * 10, batch_size=3)
        first = next(it)
        assert isinstance(first, Explanation)
        assert len(decoded) == 3  # the first batch only
        assert len(list(it)) == 9 and len(decoded) == 10
        # a batch also closes at the pixel budget: 120x80 = 9600 pixels per image
        ex.pixel_budget = 2 * 9600
        assert [len(b) for b in ex.iter_batches([good_image] * 5, batch_size=8)] == [2, 2, 1]


# ----------------------------------------------------------------------------- 2. one bad item


def _zero_count_width_tiff(rgb: np.ndarray) -> bytes:
    data = bytearray(make_tiff(rgb))
    n = struct.unpack_from("<H", data, 8)[0]
    for i in range(n):
        off = 10 + 12 * i
        if struct.unpack_from("<H", data, off)[0] == 256:
            struct.pack_into("<I", data, off + 4, 0)  # ImageWidth with count 0
    return bytes(data)


def test_mixed_folder_non_utf8_name_broken_tiff_and_long_name(tiny, photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    bgr = _photo(photos)
    ok, png = cv2.imencode(".png", bgr)
    good = {"cat.png": None, os.fsdecode(b"caf\xe9.png"): "caf_", "x" * 240 + ".png": None}
    for name in good:
        (folder / name).write_bytes(png.tobytes())
    (folder / "broken.tif").write_bytes(_zero_count_width_tiff(bgr[:, :, ::-1].copy()))
    with pytest.raises(ImageError, match="broken.tif: .*TIFF"):  # not an IndexError
        load_image(folder / "broken.tif")
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, folder, "--out", out, "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    (line,) = error_lines(r.output)
    assert "broken.tif" in line and "TIFF" in line
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert doc["images"] == 3 and doc["failed"] == 1 and len(doc["results"]) == 3
    written = {f.name for f in out.iterdir()}
    assert "cat.gradcam.png" in written and "caf_.gradcam.png" in written
    assert "x" * 240 + ".gradcam.png" in written and "x" * 240 + ".gradcam.npy" in written
    for rec in doc["results"]:  # report.json names exactly the files written
        for f in rec["outputs"].values():
            assert Path(f).is_file(), f
    assert any(rec["file"].endswith("caf\\xe9.png") for rec in doc["results"])
    assert not [f for f in written if f.endswith(".tmp")]


def test_memory_error_in_one_image_spares_its_batch(tiny, photos, tmp_path, monkeypatch):
    import onnx_explain.explainer as explainer

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "poison.png", "c.png"):
        cv2.imwrite(str(folder / name), _photo(photos))
    real = explainer.Explainer._explain_loaded

    def fragile(self, m, method, loaded, *args):
        if any(im.path.name == "poison.png" for im in loaded):
            raise MemoryError()
        return real(self, m, method, loaded, *args)

    monkeypatch.setattr(explainer.Explainer, "_explain_loaded", fragile)
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, folder, "--out", out, "--device", "cpu", "--batch-size", "8")
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.output)
    assert "poison.png" in line and "not enough memory" in line
    doc = json.loads((out / "report.json").read_text())
    assert sorted(Path(rec["file"]).name for rec in doc["results"]) == ["a.png", "c.png"]


def test_memory_error_while_drawing_one_overlay(tiny, photos, tmp_path, monkeypatch):
    import onnx_explain.overlay as overlay_module

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _photo(photos))
    cv2.imwrite(str(folder / "big.png"), _photo(photos, (130, 90)))
    real = overlay_module.overlay

    def fragile(rgb, heat, **kwargs):
        if rgb.shape[:2] == (90, 130):
            raise MemoryError()
        return real(rgb, heat, **kwargs)

    monkeypatch.setattr(overlay_module, "overlay", fragile)
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, folder, "--out", out, "--device", "cpu")
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.output)
    assert "big.png" in line and "not enough memory" in line
    assert {f.name for f in out.iterdir()} == {"a.gradcam.png", "a.gradcam.npy", "report.json"}


def test_api_per_item_errors(tiny, good_image, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"not a picture\n")
    with Explainer(tiny.explain, device="cpu") as ex:
        got = ex.explain([good_image, bad, good_image], errors="return")
        assert [type(g).__name__ for g in got] == ["Explanation", "ItemError", "Explanation"]
        assert got[1].path == str(bad) and got[1].message.startswith(f"{bad}: not an image")
        assert isinstance(got[1].exception, ImageError)
        np.testing.assert_array_equal(got[0].heatmap, got[2].heatmap)
        preds = ex.predict([bad, good_image], errors="return")
        assert isinstance(preds[0], ItemError) and preds[1].path == str(good_image)
        with pytest.raises(ImageError):
            ex.explain([good_image, bad])  # the default still raises


# ----------------------------------------------------------------------------- 3. models


def _external(tiny, folder: Path) -> tuple[Path, onnx.ModelProto]:
    """The tiny explain model with its weights in ``folder/w.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(tiny.explain))
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    return path, onnx.load(str(path), load_external_data=False)


def _set_external(model: onnx.ModelProto, path: Path, **entries: str) -> None:
    t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for e in t.external_data:
        if e.key in entries:
            e.value = entries.pop(e.key)
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    if "dims" in entries:
        pass
    onnx.save(model, str(path))


def test_external_weights_still_load(tiny, good_image, tmp_path):
    path, _ = _external(tiny, tmp_path / "m")
    r = invoke("score", path, good_image, "--json")
    assert r.exit_code == 0, r.output


def test_impossible_external_size_is_refused_without_allocating(tiny, good_image, tmp_path):
    path, model = _external(tiny, tmp_path / "m")
    t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    del t.dims[:]
    t.dims.extend([2 << 30])  # 8 GB of float32
    for e in t.external_data:
        if e.key == "length":
            e.value = str(8 << 30)
    onnx.save(model, str(path))
    assert path.stat().st_size < 50_000
    for command in (["score", path, good_image], ["inspect", path]):
        peak, r = _peak_rss_mb([str(a) for a in command], tmp_path)
        assert r.returncode == 2, r.stderr.decode()
        err = r.stderr.decode()
        assert err.count("error:") == 1 and "Traceback" not in err
        assert "declares 8.0 GB" in err and str(path) in err and repr(t.name) in err
        assert peak < 1500, peak


@pytest.mark.parametrize("how,words", [
    ("outside", "outside the model's folder"),
    ("absolute", "absolute path"),
    ("symlink", "symbolic link"),
])
def test_external_data_outside_the_folder_is_refused_as_that(tiny, good_image, tmp_path, how, words):
    path, model = _external(tiny, tmp_path / "m")
    if how == "outside":
        os.replace(tmp_path / "m" / "w.bin", tmp_path / "w.bin")
        _set_external(model, path, location="../w.bin")
    elif how == "absolute":
        _set_external(model, path, location=str(tmp_path / "m" / "w.bin"))
    else:
        os.replace(tmp_path / "m" / "w.bin", tmp_path / "elsewhere.bin")
        os.symlink(tmp_path / "elsewhere.bin", tmp_path / "m" / "w.bin")
    for command in (["score", path, good_image], ["inspect", path]):
        r = invoke(*command)
        assert r.exit_code == 2, r.output
        (line,) = error_lines(r.output)
        assert "external data refused" in line and words in line and "not an ONNX model" not in line


# ----------------------------------------------------------------------------- 4. metadata


BAD_METADATA = [
    ({"preprocess": '{"size": [32, 32], "scale": NaN}'}, "onnx_explain.preprocess", "NaN"),
    ({"preprocess": '{"size": [60000, 60000]}'}, "onnx_explain.preprocess.size[0]", "1..16384"),
    ({"preprocess": '{"size": [32, 32], "std": [0, 1, 1]}'}, "onnx_explain.preprocess.std[0]", "magnitude 1e-06"),
    ({"preprocess": '{"size": [32, '}, "onnx_explain.preprocess is not valid JSON", "line 1 column"),
    ({"labels": "5"}, "onnx_explain.labels", "a list"),
    ({"labels": '"cat"'}, "onnx_explain.labels", "a list"),
    ({"labels": '{"0": "cat"}'}, "onnx_explain.labels", "a list"),
    ({"labels": '["cat", 7, "a", "b"]'}, "onnx_explain.labels[1]", "a string"),
    ({"cam": '{"weight": "nope", "transposed": false}'}, "onnx_explain.cam.weight", "not an initializer"),
]


@pytest.mark.parametrize("values,key,words", BAD_METADATA)
def test_bad_metadata_is_one_model_error(tiny, good_image, tmp_path, values, key, words):
    model = _with_metadata(tiny.explain, tmp_path / "bad.onnx", **values)
    out = tmp_path / "out"
    for command in (["score", model, good_image, "--json"], ["explain", model, good_image, "--out", out]):
        r = invoke(*command, "--device", "cpu")
        assert r.exit_code == 2, r.output
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.output
        assert str(model) in lines[0] and key in lines[0] and words in lines[0], lines[0]
    assert not out.exists()


def test_json_output_is_strict(tiny, good_image):
    r = invoke("score", tiny.explain, good_image, "--json")

    def no_constants(name):
        raise AssertionError(f"{name} in --json output")

    doc = json.loads(r.stdout, parse_constant=no_constants)
    assert doc["results"][0]["file"] == str(good_image)


# ----------------------------------------------------------------------------- 5. terminal


def test_labels_and_file_names_cannot_drive_the_terminal(tiny, photos, tmp_path):
    evil = ["\x1b[2J\x1b[31mcat", "cup\nerror: forged line", "person\r", "rocket\u202e"]
    model = _with_metadata(tiny.explain, tmp_path / "evil.onnx", labels=json.dumps(evil))
    folder = tmp_path / "in"
    folder.mkdir()
    name = "a\x1b]0;title\x07b\nerror: fake.png"
    cv2.imwrite(str(folder / "plain.png"), _photo(photos))
    (folder / name).write_bytes((folder / "plain.png").read_bytes())
    for command in (["score", model, folder, "--top-k", "4"], ["explain", model, folder, "--out", tmp_path / "o"]):
        r = invoke(*command, "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
        assert "\r" not in r.output.replace("\r\n", "\n") or command[0] == "explain"
        assert not error_lines(r.stdout), r.stdout
        assert "\\x1b[2J\\x1b[31mcat" in r.stdout or "\\x1b" in r.stdout
    r = invoke("score", model, folder, "--top-k", "4")
    assert "\\x1b]0;title\\x07b\\nerror: fake.png:" in r.stdout
    assert "cup\\nerror: forged line" in r.stdout


# ----------------------------------------------------------------------------- 6. evaluate


def _voc(entities: str, use: str) -> str:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE a [\n{entities}]>\n'
            f"<annotation><filename>{use}</filename><object><name>x</name><bndbox><xmin>1</xmin>"
            "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>\n")


def test_entity_expansion_annotation_is_refused_at_once(tmp_path):
    from onnx_explain.evaluation.boxes import AnnotationError, read_voc_xml

    levels = ['<!ENTITY e0 "' + "lol" * 10 + '">\n'] + [
        f'<!ENTITY e{i} "{("&e" + str(i - 1) + ";") * 10}">\n' for i in range(1, 4)]
    small = tmp_path / "small.xml"
    small.write_text(_voc("".join(levels), "&e3;"))  # 30 000 characters once expanded
    with pytest.raises(AnnotationError, match="small.xml: refused: the XML declares entities"):
        read_voc_xml(small)
    levels += [f'<!ENTITY e{i} "{("&e" + str(i - 1) + ";") * 10}">\n' for i in range(4, 9)]
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(_voc("".join(levels), "&e8;"))
    assert bomb.stat().st_size < 1200
    t0 = time.perf_counter()
    with pytest.raises(AnnotationError, match="refused"):
        read_voc_xml(bomb)
    assert time.perf_counter() - t0 < 1.0


def test_many_text_pieces_are_gathered_in_linear_time(tmp_path):
    from onnx_explain.evaluation.boxes import read_voc_xml

    p = tmp_path / "long.xml"
    p.write_text("<annotation><filename>" + "&amp;" * 200_000 + "</filename></annotation>")
    t0 = time.perf_counter()
    assert read_voc_xml(p).filename == "&" * 200_000
    assert time.perf_counter() - t0 < 2.0


# ----------------------------------------------------------------------------- 7. one run per folder


def test_a_second_run_into_a_held_folder_is_refused(tiny, good_image, tmp_path):
    out = tmp_path / "out"
    with lock_folder(out):  # another run holds it (flock: per open file, so this process conflicts too)
        r = invoke("explain", tiny.explain, good_image, "--out", out, "--device", "cpu")
        assert r.exit_code == 2, r.output
        (line,) = error_lines(r.output)
        assert "another onnx-explain run" in line and str(out) in line
        assert not (out / "report.json").exists()
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert {f.name for f in out.iterdir()} == {"cat.gradcam.png", "cat.gradcam.npy", "report.json"}


def test_two_processes_into_one_folder(tiny, good_image, tmp_path):
    """Really concurrent: whichever is second is refused, and report.json describes the
    files of the one that ran."""
    out = tmp_path / "out"
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(24):
        (folder / f"i{i:02d}.png").write_bytes(good_image.read_bytes())
    code = "import sys; from onnx_explain.command.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "explain", str(tiny.explain), str(folder), "--out", str(out),
            "--device", "cpu", "--threads", "1", "-m", "gradcam,saliency"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("another onnx-explain run" in err for c, err in results if c == 2)
    doc = json.loads((out / "report.json").read_text())
    assert len(doc["results"]) == 48
    listed = {Path(f).name for rec in doc["results"] for f in rec["outputs"].values()}
    assert listed | {"report.json"} == {f.name for f in out.iterdir()}


# ----------------------------------------------------------------------------- 8. numbers


@pytest.mark.parametrize("value", ["-5", "-2", str(-10**20), str(10**20)])
def test_target_must_be_top1_or_a_class(tiny, good_image, tmp_path, value):
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--target", value, "--device", "cpu")
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "target" in lines[0], r.output
    assert not out.exists()
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--target", "-1", "--device", "cpu")
    assert r.exit_code == 0 and json.loads((out / "report.json").read_text())["target"] == "top1"


@pytest.mark.parametrize("value", ["99999", "-5", "0"])
def test_threads_bounded(tiny, good_image, value):
    r = invoke("score", tiny.explain, good_image, "--threads", value)
    assert r.exit_code == 2 and "--threads" in r.output
    with pytest.raises(ValueError, match="threads"):
        Explainer(tiny.explain, threads=int(value))


def test_max_pixels_raises_the_cap(tiny, tmp_path):
    big = tmp_path / "wide.jpg"
    cv2.imwrite(str(big), np.full((1500, 4000, 3), 90, np.uint8))  # 6 MP
    r = invoke("score", tiny.explain, big, "--max-pixels", "5000000")
    assert r.exit_code == 1
    (line,) = error_lines(r.output)
    assert "too large" in line and "4000x1500" in line and "--max-pixels" in line
    r = invoke("score", tiny.explain, big, "--max-pixels", "6000000", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("explain", tiny.explain, big, "--max-pixels", "5000000", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "too large" in r.output


# ----------------------------------------------------------------------------- 9. smaller


def test_stale_temporaries_of_ours_are_removed(tiny, good_image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ours = out / f".cat.gradcam.png.x1y2z3w4{TMP_SUFFIX}"
    ours.write_bytes(b"half a png")
    theirs = [out / ".other.tmp", out / "notes.tmp", out / f"visible{TMP_SUFFIX}"]
    for f in theirs:
        f.write_bytes(b"keep")
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert not ours.exists()
    assert all(f.read_bytes() == b"keep" for f in theirs)


def test_temporary_names_stay_within_255_bytes(tmp_path):
    from onnx_explain.outputs import write_bytes

    name = "é" * 125 + ".png"  # 254 bytes: legal; its temporary name must be too
    write_bytes(tmp_path / name, b"data")
    assert (tmp_path / name).read_bytes() == b"data"


def test_ctrl_c_exits_130(tiny, good_image, tmp_path, monkeypatch):
    import onnx_explain.explainer as explainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(explainer.Explainer, "_batch", interrupted)
    out = tmp_path / "out"
    r = invoke("explain", tiny.explain, good_image, "--out", out, "--device", "cpu")
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output and not (out / "report.json").exists()
    r = invoke("score", tiny.explain, good_image)
    assert r.exit_code == 130


def test_decoder_warnings_do_not_reach_stderr(tiny, photos, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    rgb = _photo(photos)[:, :, ::-1].copy()
    ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    data = bytearray(jpg.tobytes())
    sos = data.find(b"\xff\xda")
    data[sos + 100 : len(data) - 2] = b""  # scan data cut, end marker kept: libjpeg warns
    (folder / "short.jpg").write_bytes(bytes(data))
    Image.fromarray(rgb).save(folder / "iccp.png", icc_profile=b"x" * 200)  # libpng: "iCCP: too short"
    code = "import sys; from onnx_explain.command.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "score", str(tiny.explain), str(folder)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    assert "Corrupt JPEG" not in r.stderr and "libpng" not in r.stderr and "premature" not in r.stderr, r.stderr
    assert all(line.startswith("error: ") for line in r.stderr.splitlines()), r.stderr


def test_threads_sharing_a_fresh_explainer_build_one_session(tiny, good_image, monkeypatch):
    import onnx_explain.session as session_module

    built = []
    real = session_module.ort.InferenceSession

    def counting(*args, **kwargs):
        built.append(1)
        time.sleep(0.2)  # a slow build: every thread arrives while it runs
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module.ort, "InferenceSession", counting)
    image = load_image(good_image)
    with Explainer(tiny.explain, device="cpu") as ex:
        barrier = threading.Barrier(8)
        got = [None] * 8

        def work(k):
            barrier.wait()
            got[k] = ex.predict([image])[0].probabilities

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(built) == 1
    assert all(g == got[0] for g in got)


def _model_through(kind: str) -> onnx.ModelProto:
    """Conv -> <an operator shape inference cannot see through> -> ReLU -> GAP -> Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv")]
    opsets = [helper.make_opsetid("", 17)]
    if kind == "custom":
        nodes.append(helper.make_node("Weird", ["c1"], ["u"], domain="com.example", name="weird"))
        opsets.append(helper.make_opsetid("com.example", 1))
    else:
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
            "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
        inits += [numpy_helper.from_array(np.array(1, np.int64), "M"), numpy_helper.from_array(np.array(True), "cond")]
        nodes.append(helper.make_node("Loop", ["M", "cond", "c1"], ["u"], body=body, name="loop"))
    nodes += [helper.make_node("Relu", ["u"], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "w3"], ["logits"], transB=1, name="head")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("kind,op,words", [("custom", "Weird", "domain 'com.example'"), ("loop", "Loop", "node 'loop'")])
def test_an_operator_hiding_shapes_is_blamed_itself(tmp_path, kind, op, words):
    path = tmp_path / f"{kind}.onnx"
    onnx.save(_model_through(kind), str(path))
    r = invoke("augment", path, "-o", tmp_path / "out.onnx")
    assert r.exit_code == 2, r.output
    (line,) = error_lines(r.output)
    assert f"operator {op!r}" in line and words in line, line
    assert "GlobalAveragePool' (node" not in line
    assert not (tmp_path / "out.onnx").exists()


def test_metadata_size_must_match_a_fixed_float_input(tiny, good_image, tmp_path):
    from onnx_explain.augment import augment_model
    from onnx_explain.session import ExplainSession

    model = _with_metadata(tiny.explain, tmp_path / "m.onnx", preprocess=json.dumps({"size": [64, 64]}))
    fixed = onnx.load(str(model))
    for d, v in zip(fixed.graph.input[0].type.tensor_type.shape.dim[2:], (tiny.size, tiny.size)):
        d.dim_value = v
    onnx.save(fixed, str(model))
    with pytest.raises(contract.ModelError, match=r"preprocess.size \[64, 64\] contradicts the input"):
        ExplainSession(model, device="cpu")
    pixels = tmp_path / "pixels.onnx"  # a uint8 N x H x W x 3 input: not judged by the float layout
    onnx.save(augment_model(onnx.load(str(tiny.plain)), pixels=True), str(pixels))
    assert ExplainSession(pixels, device="cpu").image_input == contract.PIXELS
