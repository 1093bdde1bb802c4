"""The runtime API: images in, explanations out, with an explain model and no torch.

    with Explainer("explain.onnx") as ex:
        for e in ex.explain(["cat.jpg"], method="gradcam"):
            print(e.label, e.probability, e.box)
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence, Union

import numpy as np

from onnx_explain.errors import ModelError
from onnx_explain.evaluation.localization import box_from_heatmap
from onnx_explain.images import LoadedImage, load_image
from onnx_explain.methods import METHODS, create, normalize01
from onnx_explain.preprocess import Geometry, preprocess_batch
from onnx_explain.session import ExplainSession

ImageLike = Union[str, os.PathLike, LoadedImage, np.ndarray]

BOX_THRESHOLD = 0.15  # fraction of the map's maximum, as in the CAM paper


@dataclasses.dataclass
class Prediction:
    """Top-k classes of one image."""

    path: str | None
    classes: list[int]
    labels: list[str]
    probabilities: list[float]


@dataclasses.dataclass
class Explanation:
    """One image explained by one method."""

    path: str | None
    method: str
    target_class: int
    label: str
    probability: float  # softmax probability of target_class
    score: float | None  # the pre-softmax logit that was differentiated
    heatmap: np.ndarray  # H0 x W0 float32 in [0, 1], on the original image's pixel grid
    raw_map: np.ndarray  # the method's raw map (feature-map or input resolution)
    box: tuple[float, float, float, float] | None  # (x0, y0, x1, y1) in original pixels
    geometry: Geometry
    top_k: Prediction | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "method": self.method,
            "class": self.target_class,
            "label": self.label,
            "probability": self.probability,
            "score": self.score,
            "box": None if self.box is None else [round(v, 2) for v in self.box],
            "top_k": None if self.top_k is None else [
                {"class": c, "label": l, "probability": p}
                for c, l, p in zip(self.top_k.classes, self.top_k.labels, self.top_k.probabilities)
            ],
            "seconds": round(self.seconds, 4),
        }


class Explainer:
    """An explain model ready to score and explain images.

    ``device``: ``"auto"`` (CUDA when onnxruntime-gpu and a GPU are there, else CPU),
    ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (an error where unavailable, never a silent
    fallback).  ``threads``: ONNX Runtime intra-op threads (default: its own choice).
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto", threads: int | None = None) -> None:
        self.session = ExplainSession(model, device=device, threads=threads)
        self.preprocess = self.session.preprocess

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session._sessions.clear()

    @property
    def labels(self) -> list[str]:
        n = self.session.num_classes or 0
        labels = self.session.labels or []
        return [labels[i] if i < len(labels) else str(i) for i in range(n)] if n else list(labels)

    def label(self, index: int) -> str:
        labels = self.session.labels
        return labels[index] if labels and 0 <= index < len(labels) else str(index)

    # ------------------------------------------------------------------ inputs
    def load(self, images: Sequence[ImageLike]) -> list[LoadedImage]:
        out = []
        for im in images:
            if isinstance(im, LoadedImage):
                out.append(im)
            elif isinstance(im, np.ndarray):
                out.append(LoadedImage.from_array(im))
            else:
                out.append(load_image(im))
        return out

    def _batch(self, images: Sequence[ImageLike]) -> tuple[list[LoadedImage], np.ndarray, list[Geometry]]:
        loaded = self.load(images)
        batch, geometries = preprocess_batch(loaded, self.preprocess)
        if self.preprocess.layout == "NHWC":  # the session and the methods speak NCHW
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return loaded, batch, geometries

    # ------------------------------------------------------------------ predict
    def predict(self, images: Sequence[ImageLike], top_k: int = 5, batch_size: int = 16) -> list[Prediction]:
        loaded, batch, _ = self._batch(images)
        probs = np.concatenate([
            self.session(batch[i : i + batch_size], None, ["probabilities"])["probabilities"]
            for i in range(0, len(batch), batch_size)
        ])
        return [self._top_k(im, p, top_k) for im, p in zip(loaded, probs)]

    def _top_k(self, image: LoadedImage, probs: np.ndarray, k: int) -> Prediction:
        order = np.argsort(-probs)[: max(1, k)]
        return Prediction(
            str(image.path) if image.path is not None else None,
            [int(c) for c in order],
            [self.label(int(c)) for c in order],
            [float(probs[c]) for c in order],
        )

    # ------------------------------------------------------------------ explain
    def method(self, name: str, **options: Any):
        """The method object ``name`` bound to this model (CAM gets the head's weights)."""
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
        if name == "cam" and "weights" not in options:
            options["weights"] = self.session.cam_weights()[0]
        method = create(name, self.session, **options)
        missing = [o for o in method.requires if o not in self.session.output_names and o not in ("logits", "probabilities")]
        if missing:
            raise ModelError(
                f"method {name!r} needs the model output(s) {', '.join(missing)}; "
                f"re-run augment/export with input gradients and guided backprop enabled"
            )
        return method

    def explain(
        self,
        images: Sequence[ImageLike],
        method: str = "gradcam",
        target: int | Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        top_k: int = 5,
        progress: Callable[[int, int], None] | None = None,
        **method_options: Any,
    ) -> list[Explanation]:
        """Explain each image for ``target`` (None or negative: its top-1 class)."""
        start = time.perf_counter()
        loaded, batch, geometries = self._batch(images)
        n = len(loaded)
        t = _targets(target, n)
        if self.session.num_classes is not None:
            bad = t[t >= self.session.num_classes]
            if bad.size:
                raise ModelError(
                    f"target class {int(bad[0])} out of range: the model has {self.session.num_classes} classes "
                    f"(0..{self.session.num_classes - 1})"
                )
        m = self.method(method, **method_options)
        recorder = _RecordingForward(self.session)
        if m.multi_pass:
            probs = self.session(batch, None, ["probabilities"])["probabilities"]
            m.forward = self.session
        else:
            m.forward = recorder
        result = m.attribute(batch, t, batch_size=batch_size, progress=progress)
        if not m.multi_pass:
            probs = np.concatenate(recorder.probabilities)
        maps01 = normalize01(result.maps)
        per_image = (time.perf_counter() - start) / max(n, 1)
        out = []
        for i, (im, geo) in enumerate(zip(loaded, geometries)):
            heat = np.clip(geo.to_original(maps01[i]), 0.0, 1.0)
            box = box_from_heatmap(heat, BOX_THRESHOLD)
            c = int(result.target_class[i])
            out.append(Explanation(
                path=str(im.path) if im.path is not None else None,
                method=method,
                target_class=c,
                label=self.label(c),
                probability=float(probs[i][c]),
                score=None if result.score is None else float(result.score[i]),
                heatmap=heat.astype(np.float32),
                raw_map=result.maps[i],
                box=None if box is None else box.as_tuple(),
                geometry=geo,
                top_k=self._top_k(im, probs[i], top_k),
                seconds=per_image,
            ))
        return out


class _RecordingForward:
    """Passes calls to the session and keeps the probabilities of the same runs."""

    def __init__(self, session: ExplainSession) -> None:
        self.session = session
        self.probabilities: list[np.ndarray] = []

    def __call__(self, inputs, target, outputs):
        got = self.session(inputs, target, list(outputs) + ["probabilities"])
        self.probabilities.append(got.pop("probabilities"))
        return got


def _targets(target: int | Sequence[int] | None, n: int) -> np.ndarray:
    if target is None:
        return np.full(n, -1, dtype=np.int64)
    t = np.asarray(target, dtype=np.int64).reshape(-1)
    if t.size == 1:
        return np.full(n, int(t[0]), dtype=np.int64)
    if t.size != n:
        raise ValueError(f"{t.size} targets for {n} images")
    return t


__all__ = ["Explainer", "Explanation", "Prediction"]
