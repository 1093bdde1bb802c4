"""Import the repository-top ``export/``, ``models/`` and ``cli.py`` under their installed names.

The repository keeps ``export/``, ``models/`` and ``cli.py`` at its top for readability;
installed (a wheel, or ``pip install -e . --config-settings editable_mode=strict``) they
live inside the package as ``onnx_explain.export``, ``onnx_explain.models`` and
``onnx_explain.command.cli`` (``[tool.setuptools.package-dir]`` in pyproject.toml).
When the package is imported straight from a checkout, as with the repository root on
``sys.path`` or a plain ``pip install -e .`` (whose import hook cannot give a name to the
repository root, which has no ``__init__.py``), this finder gives those names to the
same files.

It is installed only when the package sits in a checkout of this project (next to our
pyproject.toml), and it comes last on ``sys.meta_path``: whatever the normal import
system finds wins.  :data:`PACKAGE_DIRS` must match pyproject.toml (a test checks it).
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location

# installed name -> folder relative to the repository root (pyproject's package-dir)
PACKAGE_DIRS = {
    "onnx_explain.export": "export",
    "onnx_explain.models": "models",
    "onnx_explain.command": ".",
}


def checkout_root(package_dir: str) -> str | None:
    """The repository root when ``package_dir`` is the ``onnx_explain`` folder of a checkout."""
    root = os.path.dirname(os.path.abspath(package_dir))
    try:
        with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
            project = f.read()
    except OSError:
        return None
    if 'name = "onnx-explain"' not in project or not os.path.isfile(os.path.join(root, "cli.py")):
        return None
    return root


class CheckoutFinder:
    """A meta path finder for the names in :data:`PACKAGE_DIRS`, rooted at one checkout."""

    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        rel = PACKAGE_DIRS.get(fullname)
        if rel is None:
            return None
        folder = os.path.normpath(os.path.join(self.root, rel))
        init = os.path.join(folder, "__init__.py")
        if os.path.isfile(init):
            return spec_from_file_location(fullname, init, submodule_search_locations=[folder])
        if not os.path.isdir(folder):
            return None
        # A folder without __init__.py (the repository root, for cli.py): a namespace package.
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [folder]
        return spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"


def install(package_dir: str) -> None:
    """Append a :class:`CheckoutFinder` when ``package_dir`` is in a checkout (once)."""
    root = checkout_root(package_dir)
    if root is None:
        return
    if not any(isinstance(f, CheckoutFinder) and f.root == root for f in sys.meta_path):
        sys.meta_path.append(CheckoutFinder(root))
