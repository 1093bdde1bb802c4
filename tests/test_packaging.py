"""Packaging: the wheel, both editable modes and the source checkout give the same names.

The repository keeps export/, models/ and cli.py at its top; installed, they are
onnx_explain.export, onnx_explain.models and onnx_explain.command.cli, and nothing generic
lands at the top of site-packages.  Each layout is built with setuptools' own PEP 517
hooks (what ``pip install .`` and ``pip install -e .`` call) into a temporary folder,
then imported in a fresh interpreter that sees only that folder and the dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "cli.py", "onnx_explain", "export", "models")
ENTRY = "onnx_explain.command.cli:main"

# Run in a fresh interpreter: import the installed names, report where each came from.
PROBE = r"""
import importlib, importlib.metadata, importlib.util, json, sys
found = {n: importlib.util.find_spec(n).origin
         for n in ("onnx_explain", "onnx_explain.export", "onnx_explain.models", "onnx_explain.command.cli")}
module, _, attr = sys.argv[1].partition(":")
main = getattr(importlib.import_module(module), attr)
try:
    main(["--version"])
    code = 0
except SystemExit as exc:
    code = exc.code
generic = [n for n in ("export", "models", "cli", "command") if importlib.util.find_spec(n) is not None]
print(json.dumps({"origins": found, "version_exit": code, "generic": generic}))
"""


def _deps_path() -> list[str]:
    """Where this interpreter finds the dependencies (click...), without running any .pth."""
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _probe(sys_path: list[str], cwd: Path, addsitedir: str | None = None) -> dict:
    """Run PROBE with -S (no site-packages, no .pth) and exactly ``sys_path`` (+ the deps)."""
    setup = f"import sys; sys.path[:0] = {sys_path!r}\n"
    if addsitedir:  # an editable install: its .pth file runs (before the deps are on the path, so
        # that it imports its own finder module, not the one of this environment's install)
        setup += f"import site; site.addsitedir({addsitedir!r})\n"
    setup += f"sys.path += {_deps_path()!r}\n"
    r = subprocess.run([sys.executable, "-S", "-c", setup + PROBE, ENTRY], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The wheel and both editable wheels, built from a copy of the sources."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    hooks = {  # what pip install . / pip install -e . / ... editable_mode=strict call
        "wheel": "build_wheel({out!r})",
        "lenient": "build_editable({out!r})",
        "strict": "build_editable({out!r}, {{'editable_mode': 'strict'}})",
    }
    built = {}
    for layout, call in hooks.items():
        out = tmp / layout
        script = f"from setuptools import build_meta\nprint('BUILT', build_meta.{call.format(out=str(out))})"
        r = subprocess.run([sys.executable, "-c", script], cwd=src, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        built[layout] = out / next(ln for ln in r.stdout.splitlines() if ln.startswith("BUILT ")).split()[1]
    wheel, lenient, strict = built["wheel"], built["lenient"], built["strict"]
    return {"tmp": tmp, "src": src, "wheel": wheel, "lenient": lenient, "strict": strict}


def _unpack(wheel: Path, into: Path) -> Path:
    into.mkdir()
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    return into


def test_wheel_holds_one_package_and_every_subpackage(built):
    names = zipfile.ZipFile(built["wheel"]).namelist()
    assert {n.split("/")[0] for n in names} == {"onnx_explain", "onnx_explain-0.1.0.dist-info"}
    # every package folder of the source is in the wheel (a package missing from pyproject's list is caught)
    src = built["src"]
    for init in src.joinpath("onnx_explain").rglob("__init__.py"):
        assert init.relative_to(src).as_posix() in names
    for mapped in ("export", "models"):
        for py in src.joinpath(mapped).glob("*.py"):
            assert f"onnx_explain/{mapped}/{py.name}" in names
    assert "onnx_explain/models/imagenet_labels.json" in names
    # the repository root maps to onnx_explain.command: only cli.py may come from there
    assert [n for n in names if n.startswith("onnx_explain/command/")] == ["onnx_explain/command/cli.py"]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert f"onnx-explain = {ENTRY}" in zipfile.ZipFile(built["wheel"]).read(entry_points).decode()


@pytest.mark.parametrize("layout", ["wheel", "lenient", "strict"])
def test_installed_names_resolve(built, layout, tmp_path):
    """pip install . / pip install -e . / pip install -e . --config-settings editable_mode=strict."""
    site_dir = _unpack(built[layout], tmp_path / "site-packages")
    if layout == "wheel":
        got = _probe([str(site_dir)], cwd=tmp_path)
        where = site_dir
    else:
        got = _probe([], cwd=tmp_path, addsitedir=str(site_dir))
        where = built["src"] if layout == "lenient" else built["src"] / "build"
    origins = got["origins"]
    for name, origin in origins.items():
        assert origin and Path(origin).is_relative_to(where), (name, origin)
    assert Path(origins["onnx_explain.command.cli"]).name == "cli.py"
    assert got["version_exit"] == 0
    assert got["generic"] == []


def test_source_checkout_resolves_without_install(tmp_path):
    """The repository root on sys.path first (python -c / python -m pytest in the checkout)."""
    got = _probe([str(ROOT)], cwd=ROOT)
    origins = got["origins"]
    assert origins["onnx_explain"] == str(ROOT / "onnx_explain" / "__init__.py")
    assert origins["onnx_explain.export"] == str(ROOT / "export" / "__init__.py")
    assert origins["onnx_explain.models"] == str(ROOT / "models" / "__init__.py")
    assert origins["onnx_explain.command.cli"] == str(ROOT / "cli.py")
    assert got["version_exit"] == 0


def test_checkout_finder_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from onnx_explain._checkout import PACKAGE_DIRS

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = dict(config["tool"]["setuptools"]["package-dir"])
    assert package_dir.pop("onnx_explain") == "onnx_explain"
    assert package_dir == PACKAGE_DIRS
    assert config["project"]["scripts"]["onnx-explain"] == ENTRY
