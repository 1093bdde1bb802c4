"""Explanations and predictions as answers: JSON objects, base64 arrays, overlay PNGs.

The overlay is the command line's (``onnx-explain explain``): the heatmap blended over
the photo, the box at 15 % of the map's maximum, and the caption ``label  p=0.92``.
"""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np

from onnx_explain.explainer import Explanation, Prediction
from onnx_explain.images import LoadedImage
from onnx_explain.methods import normalize01
from onnx_explain.outputs import to_jsonable
from onnx_explain.overlay import caption, draw_box, overlay


def prediction_json(p: Prediction, top_k: int) -> dict[str, Any]:
    return {
        "classes": [int(c) for c in p.classes[:top_k]],
        "labels": [str(label) for label in p.labels[:top_k]],
        "probabilities": [to_jsonable(np.float32(v)) for v in p.probabilities[:top_k]],
    }


def overlay_png(image: LoadedImage, e: Explanation) -> bytes:
    picture = overlay(image.rgb, e.heatmap)
    if e.box is not None:
        picture = draw_box(picture, e.box, (255, 255, 255), label=caption(e.label, e.probability))
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def explanation_json(e: Explanation, instance: int, image: LoadedImage, *, want_map: bool = True,
                     want_heatmap: bool = False, want_overlay: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "instance": instance,
        "method": e.method,
        "class": int(e.target_class),
        "label": str(e.label),
        "probability": to_jsonable(np.float32(e.probability)),
        "score": None if e.score is None else to_jsonable(np.float32(e.score)),
        "box": None if e.box is None else [round(float(v), 2) for v in e.box],
    }
    if want_map:
        out["map"] = to_jsonable(normalize01(e.raw_map))
    if want_heatmap:
        heat = np.ascontiguousarray(e.heatmap, dtype="<f4")
        out["heatmap"] = {"shape": list(heat.shape), "datatype": "FP32",
                          "b64": base64.b64encode(heat.tobytes()).decode("ascii")}
    if want_overlay:
        out["overlay"] = {"b64": base64.b64encode(overlay_png(image, e)).decode("ascii")}
    return out
