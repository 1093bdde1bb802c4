"""SmoothGrad (Smilkov et al., 2017, arXiv:1706.03825).

Attribution ``= mean_s |dY_c/dX (X + eps_s)|`` over ``n_samples`` noisy copies, ``eps_s ~
N(0, sigma^2)`` with ``sigma = stdev_spread * (max(X) - min(X))`` per image (the paper's
"noise level" as a fraction of the input range, Sec. 3.1) -- Captum
``NoiseTunnel(Saliency(abs=True)).attribute(nt_type="smoothgrad")`` with that noise.
``abs=False`` averages the signed gradients (the paper's plain SmoothGrad).  Map = max
over channels (``reduction="max_abs"``, as :mod:`saliency`).

Noise comes from ``numpy.random.default_rng(seed)`` (re-seeded at every call, drawn row by
row in image-major order ``(image, sample)``, so results do not depend on
``batch_size``), or is given explicitly as ``noise`` (``N x n_samples x C x H x W``, the
noise actually added) to the constructor or to :meth:`attribute`.
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import (
    REDUCTIONS,
    Attribution,
    Forward,
    Method,
    Progress,
    add_rows,
    reduce_channels,
)


class SmoothGrad(Method):
    name = "smoothgrad"
    requires = (contract.GRAD_INPUT,)
    resolution = "input"
    multi_pass = True

    def __init__(
        self,
        forward: Forward,
        *,
        n_samples: int = 25,
        stdev_spread: float = 0.15,
        seed: int | None = 0,
        noise: np.ndarray | None = None,
        abs: bool = True,
        reduction: str = "max_abs",
    ):
        super().__init__(forward)
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown channel reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}")
        self.n_samples = int(n_samples)
        self.stdev_spread = float(stdev_spread)
        self.seed = seed
        self.noise = noise
        self.abs = bool(abs)
        self.reduction = reduction

    def _attribute(self, inputs, target, batch_size, progress, noise=None):
        n, n_s = inputs.shape[0], self.n_samples
        noise = self.noise if noise is None else noise
        if noise is not None:
            noise = np.asarray(noise, dtype=np.float32)
            want = (n, n_s) + inputs.shape[1:]
            if noise.shape != want:
                raise ValueError(f"noise must have shape {want} (N x n_samples x C x H x W), got {noise.shape}")
        tracker = Progress(progress, n + n * n_s)
        first = self._run(inputs, target, (contract.TARGET_CLASS, contract.SCORE), batch_size, tracker)
        classes = first[contract.TARGET_CLASS].astype(np.int64)
        flat = inputs.reshape(n, -1)
        sigma = (self.stdev_spread * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)
        rng = np.random.default_rng(self.seed)

        def make(idx):
            ii, ss = idx // n_s, idx % n_s
            if noise is not None:
                eps = noise[ii, ss]
            else:
                eps = rng.standard_normal((len(idx),) + inputs.shape[1:], dtype=np.float32)
                eps *= sigma[ii][:, None, None, None]
            return inputs[ii] + eps, classes[ii]

        total = np.zeros(inputs.shape, dtype=np.float64)
        for idx, got in self._stream(n * n_s, make, (contract.GRAD_INPUT,), batch_size, tracker):
            g = got[contract.GRAD_INPUT].astype(np.float64)
            add_rows(total, idx // n_s, np.abs(g) if self.abs else g)
        attr = (total / n_s).astype(np.float32)
        return Attribution(
            method=self.name,
            maps=reduce_channels(attr, self.reduction),
            target_class=classes,
            resolution="input",
            score=first[contract.SCORE].astype(np.float32).reshape(-1),
            attributions=attr,
            extras=[{"n_samples": n_s, "stdev": float(s)} for s in sigma]
            if noise is None
            else [{"n_samples": n_s, "stdev": float(noise[i].std())} for i in range(n)],
        )
