"""The common ground of all explanation methods.

* :class:`Forward`: how a method sees the model -- one callable, ``forward(inputs, target,
  outputs)``, implemented over an ONNX Runtime session by the runtime (and over torch in
  the tests).  Methods never see the session, the graph or the framework.
* :class:`Attribution`: what every method returns.
* :class:`Method`: the Captum-shaped base, ``Method(forward, **options).attribute(inputs,
  target, batch_size=..., progress=...)``.  It validates the arguments, batches the passes
  through ``forward`` and reports progress.
* :class:`BaseCAM`: the pytorch-grad-cam-shaped base of the CAM family: a method gives its
  channel-weighting rule (:meth:`BaseCAM.channel_weights`) or, when the rule is not a
  per-channel weight, its whole map rule (:meth:`BaseCAM.cam_image`).
* :class:`InputGradientMethod`: the base of the input-space methods (saliency and
  relatives) and the channel reductions they use to turn ``N x C x H x W`` into a map.
* :func:`normalize01`: per-image min-max normalisation, safe on constant maps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence

import numpy as np

from onnx_explain import contract

#: Extra output names a :class:`Forward` understands besides the contract's.
LOGITS = "logits"  # the model's own output, pre-softmax logits, N x classes
PROBABILITIES = "probabilities"  # softmax of LOGITS

#: ``progress(done, total)``: passes (rows through ``forward``) done so far and in all.
#: ``total`` can grow once, after the first pass, for methods whose pass count depends on
#: the model's answer (Score-CAM skips constant channels).
ProgressCallback = Callable[[int, int], None]


class Forward(Protocol):
    """The model as a method sees it.

    ``inputs``: float32 ``N x C x H x W`` (always NCHW; a runner over an NHWC model
    transposes).  ``target``: int64 ``N``, the class per image, negative = top-1.
    ``outputs``: names from :mod:`onnx_explain.contract` (``activations``,
    ``grad_activations``, ``grad_input``, ``guided_grad_input``, ``score``,
    ``target_class``) plus :data:`LOGITS` and :data:`PROBABILITIES`.

    Returns a dict with exactly those names.  Gradients are of the pre-softmax logit of
    ``target_class``; ``activations``/``grad_activations`` are ``N x K x h x w``,
    ``grad_input``/``guided_grad_input`` are shaped like ``inputs``.
    """

    def __call__(self, inputs: np.ndarray, target: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class Attribution:
    """The result of one method on a batch of ``N`` images.

    ``maps`` is raw (not normalised): ``N x h x w`` at feature-map resolution for the CAM
    family (``resolution == "feature"``), ``N x H x W`` at input resolution for the
    input-space methods (``resolution == "input"``).  Normalise with :func:`normalize01`
    and resize to the image in the caller.
    """

    method: str
    maps: np.ndarray  # N x h x w float32, raw
    target_class: np.ndarray  # N int64, the class explained
    resolution: str  # "feature" or "input"
    score: np.ndarray | None = None  # N float32, logit of target_class on the unmodified input
    #: Input-space methods: the unreduced attribution, ``N x C x H x W`` (what Captum returns).
    attributions: np.ndarray | None = None
    #: CAM methods with a channel-weighting rule: ``N x K`` weights.
    channel_weights: np.ndarray | None = None
    #: Per-image extra information (JSON-friendly scalars), one dict per image.
    extras: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def normalized(self) -> np.ndarray:
        """``maps`` min-max normalised to [0, 1] per image."""
        return normalize01(self.maps)

    def __len__(self) -> int:
        return int(self.maps.shape[0])


def normalize01(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1]: per image for ``N x h x w``, as a whole for ``h x w``.

    A constant (e.g. all-zero) map gives zeros, never NaN; non-finite values count as 0.
    """
    m = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if m.ndim == 2:
        return normalize01(m[None])[0]
    if m.ndim < 2:
        raise ValueError(f"normalize01 expects h x w or N x h x w maps, got shape {m.shape}")
    axes = tuple(range(1, m.ndim))
    lo = m.min(axis=axes, keepdims=True)
    span = m.max(axis=axes, keepdims=True) - lo
    safe = np.where(span > 0, span, np.float32(1.0))
    out = np.where(span > 0, (m - lo) / safe, np.float32(0.0))
    return out.astype(np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# channel reductions of N x C x H x W input-space attributions


def _reduce_max_abs(a: np.ndarray) -> np.ndarray:
    return np.abs(a).max(axis=1)


def _reduce_abs_sum(a: np.ndarray) -> np.ndarray:
    return np.abs(a.sum(axis=1))


REDUCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # max over channels of |a| (Simonyan et al. 2014, the saliency-map paper)
    "max_abs": _reduce_max_abs,
    # |sum over channels| (Captum's visualize_image_attr default: channel sum, sign="absolute_value")
    "abs_sum": _reduce_abs_sum,
    "sum_abs": lambda a: np.abs(a).sum(axis=1),
    "sum": lambda a: a.sum(axis=1),  # signed
    "max": lambda a: a.max(axis=1),
    "mean_abs": lambda a: np.abs(a).mean(axis=1),
    "l2": lambda a: np.sqrt((a.astype(np.float64) ** 2).sum(axis=1)),
}


def reduce_channels(attributions: np.ndarray, reduction: str) -> np.ndarray:
    """``N x C x H x W`` -> ``N x H x W`` with one of :data:`REDUCTIONS`."""
    try:
        fn = REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"unknown channel reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}") from None
    return np.asarray(fn(attributions), dtype=np.float32)


# ----------------------------------------------------------------------------------------
# the method base


def _as_inputs(inputs: Any) -> np.ndarray:
    x = np.asarray(inputs)
    if x.ndim != 4:
        raise ValueError(f"inputs must be N x C x H x W, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("inputs hold no images (batch dimension is 0)")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"inputs must be floating point (preprocessed), got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_target(target: Any, n: int) -> np.ndarray:
    if target is None:
        return np.full(n, -1, dtype=np.int64)
    t = np.asarray(target)
    if t.ndim == 0:
        t = np.full(n, int(t), dtype=np.int64)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"target must be one class per image ({n}), got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        if not np.issubdtype(t.dtype, np.floating) or not np.all(np.mod(t, 1) == 0):
            raise ValueError(f"target must hold integer class indices, got {t!r}")
    return t.astype(np.int64)


class Method:
    """Base of every explanation method (Captum-shaped).

    ``Method(forward, **options).attribute(inputs, target=None, batch_size=16,
    progress=None)``.  ``target``: ``None`` (top-1 for every image), one int for all, or
    one class per image; negative entries mean top-1.
    """

    name: ClassVar[str] = ""
    #: the ``forward`` outputs the method needs (so a caller can check the model has them)
    requires: ClassVar[tuple[str, ...]] = ()
    resolution: ClassVar[str] = "feature"
    #: several passes per image (batched through ``forward`` with ``batch_size``)
    multi_pass: ClassVar[bool] = False

    def __init__(self, forward: Forward):
        if not callable(forward):
            raise TypeError(f"forward must be callable (the model runner), got {type(forward).__name__}")
        self.forward = forward

    def attribute(
        self,
        inputs: np.ndarray,
        target: Any = None,
        *,
        batch_size: int = 16,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> Attribution:
        """Explain ``inputs`` (float32 ``N x C x H x W``) for ``target``.

        ``batch_size``: rows per ``forward`` call; ``progress(done, total)``: called after
        each call.  ``options``: per-call data of some methods (``baselines`` for
        integrated gradients, ``noise`` for SmoothGrad).
        """
        x = _as_inputs(inputs)
        t = _as_target(target, x.shape[0])
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self._attribute(x, t, int(batch_size), progress, **options)

    __call__ = attribute

    def _attribute(
        self, inputs: np.ndarray, target: np.ndarray, batch_size: int, progress: ProgressCallback | None
    ) -> Attribution:
        raise NotImplementedError

    # -- running the model ------------------------------------------------------------

    def _call(self, inputs: np.ndarray, target: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        result = self.forward(inputs, target, list(outputs))
        n = inputs.shape[0]
        got: dict[str, np.ndarray] = {}
        for name in outputs:
            if name not in result:
                raise KeyError(
                    f"method {self.name!r} needs the model output {name!r}, which the runner did not return "
                    f"(returned: {sorted(result)}); re-augment the model with it"
                )
            value = np.asarray(result[name])
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(f"output {name!r} has shape {value.shape}, expected {n} rows")
            got[name] = value
        return got

    def _run(
        self,
        inputs: np.ndarray,
        target: np.ndarray,
        outputs: Sequence[str],
        batch_size: int,
        tracker: "Progress | None" = None,
    ) -> dict[str, np.ndarray]:
        """One pass over ``inputs`` in chunks of ``batch_size``; outputs concatenated."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        for start in range(0, inputs.shape[0], batch_size):
            stop = min(start + batch_size, inputs.shape[0])
            got = self._call(inputs[start:stop], target[start:stop], outputs)
            for name in outputs:
                parts[name].append(got[name])
            if tracker is not None:
                tracker.advance(stop - start)
        return {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}

    def _stream(
        self,
        rows: int,
        make: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        outputs: Sequence[str],
        batch_size: int,
        tracker: "Progress | None" = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Multi-pass helper: ``rows`` synthetic inputs, built chunk by chunk by
        ``make(row_indices) -> (inputs, target)`` (so they never all sit in memory)."""
        for start in range(0, rows, batch_size):
            idx = np.arange(start, min(start + batch_size, rows))
            x, t = make(idx)
            got = self._call(np.ascontiguousarray(x, dtype=np.float32), t.astype(np.int64), outputs)
            if tracker is not None:
                tracker.advance(len(idx))
            yield idx, got

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def add_rows(total: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``total[rows[j]] += values[j]`` for repeated ``rows`` (faster than ``np.add.at`` on
    image-sized rows: one vectorised sum per distinct row)."""
    for r in np.unique(rows):
        total[r] += values[rows == r].sum(axis=0)


class Progress:
    """Counts rows sent through ``forward`` and reports them to a :data:`ProgressCallback`."""

    def __init__(self, callback: ProgressCallback | None, total: int):
        self.callback = callback
        self.total = int(total)
        self.done = 0

    def grow(self, extra: int) -> None:
        self.total += int(extra)

    def advance(self, n: int) -> None:
        self.done += int(n)
        if self.callback is not None:
            self.callback(self.done, self.total)


# ----------------------------------------------------------------------------------------
# the CAM family


class BaseCAM(Method):
    """Base of the CAM family (pytorch-grad-cam-shaped).

    One pass gives the target-layer activations ``A`` and gradients ``G`` (``N x K x h
    x w``); the map is ``sum_k w_k A_k`` with the subclass's :meth:`channel_weights`, or
    whatever :meth:`cam_image` computes for methods without per-channel weights; then
    ``ReLU`` (``relu=True``, as pytorch-grad-cam does for every CAM), at feature-map
    resolution.
    """

    requires = (contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS)
    resolution = "feature"

    def __init__(self, forward: Forward, *, relu: bool = True):
        super().__init__(forward)
        self.relu = bool(relu)

    def channel_weights(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """``N x K`` channel weights from ``batch`` (the pass's outputs plus ``"inputs"``)."""
        raise NotImplementedError(f"{type(self).__name__} must define channel_weights or cam_image")

    def cam_image(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw (pre-ReLU) map ``N x h x w`` and the channel weights (or ``None``)."""
        weights = np.asarray(self.channel_weights(batch), dtype=np.float32)
        acts = batch[contract.ACTIVATIONS]
        cam = np.einsum("nk,nkhw->nhw", weights, acts, optimize=True)
        return cam, weights

    def _cam(self, batch: dict[str, np.ndarray], batch_size: int, tracker: Progress):
        """Hook for methods that need more passes (Score-CAM); default: :meth:`cam_image`."""
        return self.cam_image(batch)

    def _outputs(self) -> tuple[str, ...]:
        return tuple(self.requires) + (contract.TARGET_CLASS, contract.SCORE)

    def _attribute(self, inputs, target, batch_size, progress):
        tracker = Progress(progress, inputs.shape[0])
        batch = self._run(inputs, target, self._outputs(), batch_size, tracker)
        batch["inputs"] = inputs
        acts = batch[contract.ACTIVATIONS]
        if acts.ndim != 4:
            raise ValueError(f"activations must be N x K x h x w, got shape {acts.shape}")
        cam, weights = self._cam(batch, batch_size, tracker)
        cam = np.asarray(cam, dtype=np.float32)
        if self.relu:
            cam = np.maximum(cam, 0)
        return Attribution(
            method=self.name,
            maps=cam.astype(np.float32),
            target_class=batch[contract.TARGET_CLASS].astype(np.int64),
            resolution="feature",
            score=batch[contract.SCORE].astype(np.float32).reshape(-1),
            channel_weights=None if weights is None else np.asarray(weights, dtype=np.float32),
            extras=self._extras(batch),
        )

    def _extras(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [{} for _ in range(batch["inputs"].shape[0])]


# ----------------------------------------------------------------------------------------
# input-space methods


class InputGradientMethod(Method):
    """Base of the single-pass input-space methods: the subclass turns the pass's outputs
    into an ``N x C x H x W`` attribution (:meth:`input_attribution`); the map is its
    channel reduction ``reduction`` (see :data:`REDUCTIONS`)."""

    resolution = "input"
    default_reduction: ClassVar[str] = "abs_sum"

    def __init__(self, forward: Forward, *, reduction: str | None = None):
        super().__init__(forward)
        self.reduction = reduction or self.default_reduction
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown channel reduction {self.reduction!r}; choose one of {sorted(REDUCTIONS)}")

    def input_attribution(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _attribute(self, inputs, target, batch_size, progress):
        tracker = Progress(progress, inputs.shape[0])
        outputs = tuple(self.requires) + (contract.TARGET_CLASS, contract.SCORE)
        batch = self._run(inputs, target, outputs, batch_size, tracker)
        batch["inputs"] = inputs
        attr = np.asarray(self.input_attribution(batch), dtype=np.float32)
        return self._result(attr, batch[contract.TARGET_CLASS], batch[contract.SCORE])

    def _result(self, attr, target_class, score, extras=None) -> Attribution:
        n = attr.shape[0]
        return Attribution(
            method=self.name,
            maps=reduce_channels(attr, self.reduction),
            target_class=np.asarray(target_class).astype(np.int64),
            resolution="input",
            score=None if score is None else np.asarray(score, dtype=np.float32).reshape(-1),
            attributions=attr,
            extras=extras if extras is not None else [{} for _ in range(n)],
        )
