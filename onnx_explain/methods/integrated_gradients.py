"""Integrated Gradients (Sundararajan et al., ICML 2017, arXiv:1703.01365).

``IG(X) = (X - X') * integral_0^1 dY_c/dX (X' + a (X - X')) da``, the integral
approximated with ``n_steps`` points by ``method``: ``"gausslegendre"`` (default; Captum's
default: nodes ``a_j = (1 + x_j) / 2`` and weights ``w_j / 2`` of the Gauss-Legendre rule),
or ``"riemann_left" | "riemann_right" | "riemann_middle" | "riemann_trapezoid"`` (Captum's
step rules: steps ``1/n``, the trapezoid halving the two end steps).  Same numbers as
Captum ``IntegratedGradients`` with the same method/baseline.

``baseline`` (``X'``): ``None`` = zeros, a number, or an array broadcastable to the inputs
(constructor default, or ``baselines=`` per call).  Map ``= |sum over channels|``
(``reduction="abs_sum"``).  Extras: ``convergence_delta = sum(IG) - (Y_c(X) - Y_c(X'))``
(completeness check; Captum's ``return_convergence_delta``).
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

INTEGRATION_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def integration_points(n_steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, step_sizes)`` on [0, 1] for ``method`` (float64, ``n_steps`` each)."""
    n = int(n_steps)
    if method == "gausslegendre":
        if n < 1:
            raise ValueError("n_steps must be >= 1")
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    if method not in INTEGRATION_METHODS:
        raise ValueError(f"unknown integration method {method!r}; choose one of {INTEGRATION_METHODS}")
    if n < 2:
        raise ValueError("Riemann integration needs n_steps >= 2")
    steps = np.full(n, 1.0 / n)
    kind = method.split("_")[1]
    if kind == "trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
        alphas = np.linspace(0.0, 1.0, n)
    elif kind == "left":
        alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
    elif kind == "middle":
        alphas = np.linspace(1.0 / (2 * n), 1.0 - 1.0 / (2 * n), n)
    else:  # right
        alphas = np.linspace(1.0 / n, 1.0, n)
    return alphas, steps


class IntegratedGradients(Method):
    name = "integrated_gradients"
    requires = (contract.GRAD_INPUT,)
    resolution = "input"
    multi_pass = True

    def __init__(
        self,
        forward: Forward,
        *,
        n_steps: int = 50,
        method: str = "gausslegendre",
        baseline: float | np.ndarray | None = None,
        reduction: str = "abs_sum",
    ):
        super().__init__(forward)
        self.alphas, self.steps = integration_points(n_steps, method)
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown channel reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}")
        self.n_steps = int(n_steps)
        self.method = method
        self.baseline = baseline
        self.reduction = reduction

    def _attribute(self, inputs, target, batch_size, progress, baselines=None):
        n, n_st = inputs.shape[0], self.n_steps
        base = self.baseline if baselines is None else baselines
        if base is None:
            base = np.zeros_like(inputs)
        else:
            try:
                base = np.broadcast_to(np.asarray(base, dtype=np.float32), inputs.shape)
            except ValueError:
                raise ValueError(
                    f"baseline of shape {np.shape(base)} does not broadcast to the inputs {inputs.shape}"
                ) from None
        base = np.ascontiguousarray(base, dtype=np.float32)
        diff = inputs - base

        tracker = Progress(progress, n + n * n_st + n)
        first = self._run(inputs, target, (contract.TARGET_CLASS, contract.SCORE), batch_size, tracker)
        classes = first[contract.TARGET_CLASS].astype(np.int64)
        alphas = self.alphas.astype(np.float32)
        path_rows = n * n_st

        # rows 0 .. n*n_steps-1: path points (image-major), then n rows: the baselines
        def make(idx):
            on_path = idx < path_rows
            ii = np.where(on_path, idx // n_st, idx - path_rows)
            a = np.where(on_path, alphas[np.minimum(idx % n_st, n_st - 1)], 0.0).astype(np.float32)
            return base[ii] + a[:, None, None, None] * diff[ii], classes[ii]

        total = np.zeros(inputs.shape, dtype=np.float64)
        base_score = np.zeros(n, dtype=np.float64)
        outputs = (contract.GRAD_INPUT, contract.SCORE)
        for idx, got in self._stream(path_rows + n, make, outputs, batch_size, tracker):
            on_path = idx < path_rows
            p = idx[on_path]
            if p.size:
                g = got[contract.GRAD_INPUT][on_path].astype(np.float64)
                add_rows(total, p // n_st, g * self.steps[p % n_st][:, None, None, None])
            b = idx[~on_path]
            if b.size:
                base_score[b - path_rows] = got[contract.SCORE].reshape(-1)[~on_path]
        attr = (total * diff).astype(np.float32)
        score = first[contract.SCORE].astype(np.float64).reshape(-1)
        delta = attr.reshape(n, -1).sum(axis=1, dtype=np.float64) - (score - base_score)
        return Attribution(
            method=self.name,
            maps=reduce_channels(attr, self.reduction),
            target_class=classes,
            resolution="input",
            score=score.astype(np.float32),
            attributions=attr,
            extras=[
                {"n_steps": n_st, "integration": self.method, "convergence_delta": float(d),
                 "baseline_score": float(s)}
                for d, s in zip(delta, base_score)
            ],
        )
