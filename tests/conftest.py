"""Shared fixtures: scikit-image's photos and a tiny explain model (built once per session).

torch is imported inside the fixtures only, so test files that need no torch stay free of it.
"""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png")
TINY_LABELS = ["cat", "cup", "person", "rocket"]
TINY_SIZE = 32
ZERO_CLASS = 2  # the zero-gradient model's Linear row for this class is all zero


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Real photos shipped with scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image (its photos) not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    paths = [folder / name for name in PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip("scikit-image's photos not found")
    return paths


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> types.SimpleNamespace:
    """A tiny CNN (conv-BN-ReLU-maxpool, conv-ReLU, GAP, Linear; 4 classes, 32x32) as
    ``plain.onnx`` and ``explain.onnx`` (all optional outputs), plus ``zero_grad.explain.onnx``:
    the same explain model with the Linear row of :data:`ZERO_CLASS` set to 0, so that
    explaining that class has an exactly zero gradient everywhere."""
    torch = pytest.importorskip("torch")
    from torch import nn

    import onnx
    from onnx import numpy_helper

    from onnx_explain.augment import augment_model
    from torch_reference import export

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
            )
            self.fc = nn.Linear(12, len(TINY_LABELS))

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.5)
    root = tmp_path_factory.mktemp("tiny")
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    plain = export(model, x)
    onnx.save(plain, str(root / "plain.onnx"))
    explain = augment_model(plain, input_gradients=True, guided=True, gradcam=True, labels=TINY_LABELS)
    onnx.save(explain, str(root / "explain.onnx"))
    # the zero-gradient variant: the same file with the head's weights for ZERO_CLASS set to
    # 0 (forward and gradient subgraph share the initializer, so both see it)
    head = json.loads({p.key: p.value for p in explain.metadata_props}["onnx_explain.cam"])
    init = next(i for i in explain.graph.initializer if i.name == head["weight"])
    w = numpy_helper.to_array(init).copy()
    if head["transposed"]:
        w[ZERO_CLASS] = 0.0
    else:
        w[:, ZERO_CLASS] = 0.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(explain, str(root / "zero_grad.explain.onnx"))
    (root / "labels.json").write_text(json.dumps(TINY_LABELS))
    return types.SimpleNamespace(
        root=root, plain=root / "plain.onnx", explain=root / "explain.onnx",
        zero_grad=root / "zero_grad.explain.onnx", labels=TINY_LABELS, size=TINY_SIZE,
        zero_class=ZERO_CLASS, classes=len(TINY_LABELS),
    )


@pytest.fixture()
def good_image(tmp_path, photos) -> Path:
    """A small copy of chelsea.png (fast to explain), in its own folder."""
    import cv2

    img = cv2.imread(str(photos[0]))
    path = tmp_path / "good" / "cat.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), cv2.resize(img, (120, 80), interpolation=cv2.INTER_AREA))
    return path
