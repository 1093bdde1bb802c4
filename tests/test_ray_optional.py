"""Ray is optional: the base runtime and the command line's other commands never import it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
from click.testing import CliRunner
import onnx_explain, onnx_explain.explainer, onnx_explain.session, onnx_explain.ray_batch, onnx_explain.ray_serve
from onnx_explain.command.cli import main
model, image, out = sys.argv[1:4]
codes = {}
for args in (["inspect", model], ["score", model, image, "--device", "cpu"],
             ["explain", model, image, "--out", out, "--device", "cpu"], ["explain", "--help"]):
    codes[args[0] + (" --help" if "--help" in args else "")] = CliRunner().invoke(main, args).exit_code
print(json.dumps({"codes": codes, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))}))
"""


def test_base_runtime_and_other_commands_do_not_import_ray(tiny, good_image, tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny.explain), str(good_image), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["codes"] == {"inspect": 0, "score": 0, "explain": 0, "explain --help": 0}
    assert doc["ray"] == []
    assert (tmp_path / "out" / "report.json").is_file()


def test_ray_option_without_ray_installed_fails_cleanly(tiny, good_image, tmp_path):
    # ray hidden from the import system: the option says how to get it, exit 2, no traceback
    script = ("import sys, importlib.util as u; real = u.find_spec\n"
              "u.find_spec = lambda name, *a: None if name == 'ray' else real(name, *a)\n"
              "from onnx_explain.command.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", script, "explain", str(tiny.explain), str(good_image), "--ray",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "pip install 'onnx-explain[ray]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
