"""The runtime API: images in, explanations out, with an explain model and no torch.

    with Explainer("explain.onnx") as ex:
        for e in ex.explain(["cat.jpg"], method="gradcam"):
            print(e.label, e.probability, e.box)
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from onnx_explain.errors import ModelError
from onnx_explain.evaluation.localization import box_from_heatmap
from onnx_explain.images import DEFAULT_MAX_PIXELS, ImageError, LoadedImage, display_path, load_image
from onnx_explain.methods import METHODS, create, normalize01
from onnx_explain.preprocess import Geometry, preprocess_batch
from onnx_explain.session import ExplainSession

ImageLike = Union[str, os.PathLike, LoadedImage, np.ndarray]

BOX_THRESHOLD = 0.15  # fraction of the map's maximum, as in the CAM paper
# Decoded pixels held at once: a batch closes at ``batch_size`` images or at this many
# pixels, whichever comes first (one image larger than this is a batch of its own), so
# memory does not grow with the number of inputs nor with a batch of huge photos.
PIXEL_BUDGET = 40_000_000
ERROR_MODES = ("raise", "return")


@dataclasses.dataclass
class ItemError:
    """One input that could not be scored or explained (``errors="return"``).

    ``message`` is one line, ``"<file>: <problem>"``; ``exception`` what was raised.
    """

    path: str | None
    message: str
    exception: BaseException | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "error": self.message}


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

    def __init__(self, model: str | os.PathLike, device: str = "auto", threads: int | None = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, pixel_budget: int = PIXEL_BUDGET) -> None:
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        self.session = ExplainSession(model, device=device, threads=threads)
        self.preprocess = self.session.preprocess
        self.max_pixels = max_pixels
        self.pixel_budget = max(1, int(pixel_budget))

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
    def _load_one(self, im: ImageLike) -> LoadedImage:
        if isinstance(im, LoadedImage):
            return im
        if isinstance(im, np.ndarray):
            try:
                return LoadedImage.from_array(im)
            except ValueError as e:
                raise ImageError(None, str(e)) from None
        return load_image(im, max_pixels=self.max_pixels)

    def load(self, images: Sequence[ImageLike], errors: str = "raise") -> list[LoadedImage | ItemError]:
        """Decode every input (all at once: for many files use :meth:`iter_explain`)."""
        _check_errors(errors)
        out: list[LoadedImage | ItemError] = []
        for im in images:
            try:
                out.append(self._load_one(im))
            except Exception as exc:  # noqa: BLE001 - per item
                if errors == "raise":
                    raise
                out.append(_item_error(im, exc))
        return out

    def _chunks(self, images: Sequence[ImageLike], batch_size: int, errors: str
                ) -> Iterator[list[tuple[int, LoadedImage | ItemError]]]:
        """``(index, image or error)`` per batch, decoded only when its batch comes: at
        most ``batch_size`` images and about ``pixel_budget`` pixels in memory at once."""
        chunk: list[tuple[int, LoadedImage | ItemError]] = []
        pixels = 0
        for i, im in enumerate(images):
            try:
                loaded: LoadedImage | ItemError = self._load_one(im)
            except Exception as exc:  # noqa: BLE001 - per item, whatever it is
                if errors == "raise":
                    raise
                loaded = _item_error(im, exc)
            chunk.append((i, loaded))
            if isinstance(loaded, LoadedImage):
                pixels += loaded.height * loaded.width
            if sum(isinstance(x, LoadedImage) for _, x in chunk) >= batch_size or pixels >= self.pixel_budget:
                yield chunk
                chunk, pixels = [], 0
        if chunk:
            yield chunk

    def iter_batches(self, images: Iterable[ImageLike], batch_size: int = 16
                     ) -> Iterator[list[LoadedImage | ItemError]]:
        """The inputs decoded batch by batch (at most ``batch_size`` images and about
        ``pixel_budget`` pixels each); an input that cannot be read is an
        :class:`ItemError` in its place.  A batch is decoded only when asked for."""
        for chunk in self._chunks(_as_list(images), _check_batch_size(batch_size), "return"):
            yield [x for _, x in chunk]

    def _batch(self, images: Sequence[LoadedImage]) -> tuple[list[LoadedImage], np.ndarray, list[Geometry]]:
        loaded = [self._load_one(im) for im in images]
        batch, geometries = preprocess_batch(loaded, self.preprocess)
        if self.preprocess.layout == "NHWC":  # the session and the methods speak NCHW
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return loaded, batch, geometries

    def _per_item(self, chunk, errors: str, work: Callable[[list[LoadedImage], list[int]], list], what: str):
        """Run ``work`` on a batch's good images; if the batch fails, image by image, so
        one image's failure (whatever its type, memory included) is its own alone.
        Yields results and :class:`ItemError`s in input order."""
        good = [(i, im) for i, im in chunk if isinstance(im, LoadedImage)]
        done: dict[int, Any] = {i: x for i, x in chunk if not isinstance(x, LoadedImage)}
        if good:
            try:
                results = work([im for _, im in good], [i for i, _ in good])
                done.update({i: r for (i, _), r in zip(good, results)})
            except ModelError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried one image at a time
                if errors == "raise" and len(good) == 1:
                    raise
                del exc
                for i, im in good:
                    try:
                        done[i] = work([im], [i])[0]
                    except ModelError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - this image's own failure
                        if errors == "raise":
                            raise
                        done[i] = _item_error(im, exc, what)
        for i, _ in chunk:
            yield done[i]

    # ------------------------------------------------------------------ predict
    def iter_predict(self, images: Iterable[ImageLike], top_k: int = 5, batch_size: int = 16,
                     errors: str = "raise") -> Iterator[Prediction | ItemError]:
        """Top-k classes per image, batch by batch (images decoded only when their batch
        comes).  ``errors="return"``: a bad input gives an :class:`ItemError` in its place
        and the others go on; ``"raise"``: the first one raises."""
        _check_errors(errors)
        batch_size = _check_batch_size(batch_size)

        def work(loaded: list[LoadedImage], _: list[int]) -> list[Prediction]:
            _, batch, _ = self._batch(loaded)
            probs = self.session(batch, None, ["probabilities"])["probabilities"]
            return [self._top_k(im, p, top_k) for im, p in zip(loaded, probs)]

        for chunk in self._chunks(_as_list(images), batch_size, errors):
            yield from self._per_item(chunk, errors, work, "scoring")

    def predict(self, images: Sequence[ImageLike], top_k: int = 5, batch_size: int = 16,
                errors: str = "raise") -> list[Prediction | ItemError]:
        return list(self.iter_predict(images, top_k=top_k, batch_size=batch_size, errors=errors))

    def _top_k(self, image: LoadedImage, probs: np.ndarray, k: int) -> Prediction:
        order = np.argsort(-probs)[: max(1, k)]
        return Prediction(
            display_path(image.path) if image.path is not None else None,
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

    def iter_explain(
        self,
        images: Iterable[ImageLike],
        method: str = "gradcam",
        target: int | Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        top_k: int = 5,
        progress: Callable[[int, int], None] | None = None,
        errors: str = "raise",
        **method_options: Any,
    ) -> Iterator[Explanation | ItemError]:
        """Explain each image for ``target`` (None or negative: its top-1 class), batch by
        batch: images are decoded when their batch comes and each result is handed over
        before the next batch is read, so memory stays flat however many images there are.

        ``errors="return"``: a bad input (unreadable file, or any failure of its own,
        memory included; a failed batch is retried image by image) gives an
        :class:`ItemError` in its place and the rest are done.  ``"raise"``: the first
        such failure raises.  Model errors (a class out of range, a method the model
        cannot do) always raise, before any image is read.
        """
        _check_errors(errors)
        batch_size = _check_batch_size(batch_size)
        images = _as_list(images)
        t_all = _targets(target, len(images))
        if self.session.num_classes is not None:
            bad = t_all[t_all >= self.session.num_classes]
            if bad.size:
                raise ModelError(
                    f"target class {int(bad[0])} out of range: the model has {self.session.num_classes} classes "
                    f"(0..{self.session.num_classes - 1})"
                )
        m = self.method(method, **method_options)

        def work(loaded: list[LoadedImage], index: list[int]) -> list[Explanation]:
            return self._explain_loaded(m, method, loaded, t_all[index], batch_size, top_k, progress)

        for chunk in self._chunks(images, batch_size, errors):
            yield from self._per_item(chunk, errors, work, method)

    def explain(
        self,
        images: Sequence[ImageLike],
        method: str = "gradcam",
        target: int | Sequence[int] | None = None,
        *,
        batch_size: int = 16,
        top_k: int = 5,
        progress: Callable[[int, int], None] | None = None,
        errors: str = "raise",
        **method_options: Any,
    ) -> list[Explanation | ItemError]:
        """Explain each image for ``target`` (None or negative: its top-1 class); the list
        of :meth:`iter_explain` (which see; prefer it for many images: every heatmap here
        is kept at full resolution until the call returns)."""
        return list(self.iter_explain(images, method, target, batch_size=batch_size, top_k=top_k,
                                      progress=progress, errors=errors, **method_options))

    def _explain_loaded(self, m, method: str, loaded: list[LoadedImage], t: np.ndarray, batch_size: int,
                        top_k: int, progress) -> list[Explanation]:
        start = time.perf_counter()
        loaded, batch, geometries = self._batch(loaded)
        n = len(loaded)
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
            heat = np.asarray(geo.to_original(maps01[i]), dtype=np.float32)
            np.clip(heat, 0.0, 1.0, out=heat)
            box = box_from_heatmap(heat, BOX_THRESHOLD)
            c = int(result.target_class[i])
            out.append(Explanation(
                path=display_path(im.path) if im.path is not None else None,
                method=method,
                target_class=c,
                label=self.label(c),
                probability=float(probs[i][c]),
                score=None if result.score is None else float(result.score[i]),
                heatmap=heat,
                raw_map=result.maps[i],
                box=None if box is None else box.as_tuple(),
                geometry=geo,
                top_k=self._top_k(im, probs[i], top_k),
                seconds=per_image,
            ))
        return out


def _check_errors(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be one of {', '.join(ERROR_MODES)}, got {errors!r}")


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _as_list(images: Iterable[ImageLike]) -> list[ImageLike]:
    if isinstance(images, (str, os.PathLike, np.ndarray, LoadedImage)):
        return [images]  # one image, not a sequence of them
    return images if isinstance(images, list) else list(images)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return "not enough memory" + (f" ({text})" if text else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _item_error(item: Any, exc: BaseException, what: str | None = None) -> ItemError:
    """One line naming the input and the problem, for any exception."""
    if isinstance(item, LoadedImage):
        path = item.path
    elif isinstance(item, (str, os.PathLike, bytes)):
        path = item
    else:
        path = None
    shown = display_path(path) if path is not None else None
    if isinstance(exc, ImageError):
        return ItemError(shown, str(exc), exc)
    where = shown if shown is not None else "<array>"
    doing = f"{what} failed: " if what else ""
    return ItemError(shown, f"{where}: {doing}{_reason(exc)}", exc)


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
    values = [target] if np.isscalar(target) or isinstance(target, int) else list(np.asarray(target).reshape(-1))
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"a target must be a class index (an integer), got {v!r}")
        if not -(2**63) <= int(v) < 2**63:
            raise ValueError(f"target {int(v)} is not a class index")
    t = np.asarray([int(v) for v in values], dtype=np.int64).reshape(-1)
    if t.size == 1:
        return np.full(n, int(t[0]), dtype=np.int64)
    if t.size != n:
        raise ValueError(f"{t.size} targets for {n} images")
    return t


__all__ = ["Explainer", "Explanation", "ItemError", "PIXEL_BUDGET", "Prediction"]
