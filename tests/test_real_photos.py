"""The built-in default on real photos: the pretrained EfficientNet-Lite0 and scikit-image's
chelsea, coffee and astronaut, explained through the torch-free runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnx_explain.explainer import Explainer

# chelsea.png is 451 x 300 and mostly the cat's head; its face (eyes to chin, ear to
# ear) lies in this box, the background to the right of x = 380 does not.
CAT_FACE = (80, 40, 370, 295)  # x0, y0, x1, y1


def _photo(photos: list[Path], stem: str) -> Path:
    return next(p for p in photos if p.stem == stem)


@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    from onnx_explain.export import export_model

    path = tmp_path_factory.mktemp("default") / "efficientnet_lite0.explain.onnx"
    export_model("efficientnet_lite0", path)
    return path


def test_chelsea_gradcam_peak_is_on_the_cat_face(default_model, photos):
    with Explainer(default_model, device="cpu") as ex:
        (e,) = ex.explain([_photo(photos, "chelsea")], method="gradcam")
    assert e.target_class == 285 and e.label == "Egyptian cat"
    assert abs(e.probability - 0.78) < 0.05
    assert e.heatmap.shape == (300, 451)
    y, x = np.unravel_index(np.argmax(e.heatmap), e.heatmap.shape)
    x0, y0, x1, y1 = CAT_FACE
    assert x0 <= x < x1 and y0 <= y < y1, f"Grad-CAM peak at ({x}, {y}) is off the face"
    assert e.box is not None and e.box[0] < 300 and e.box[2] > 150


def test_other_photos_get_sensible_classes(default_model, photos):
    with Explainer(default_model, device="cpu") as ex:
        coffee, astronaut = ex.predict([_photo(photos, "coffee"), _photo(photos, "astronaut")], top_k=5)
    assert {"cup", "espresso", "coffee mug"} & set(coffee.labels), coffee.labels
    assert np.isclose(sum(coffee.probabilities), sum(sorted(coffee.probabilities, reverse=True)))
    assert astronaut.probabilities == sorted(astronaut.probabilities, reverse=True)
