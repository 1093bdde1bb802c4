"""CAM (Zhou et al., CVPR 2016, arXiv:1512.04150).

For a network ending ``features -> global average pool -> linear`` with weight matrix
``W`` (classes x K), ``map_c = sum_k W[c, k] A_k`` (Eq. 2), then ReLU (``relu=True``, as
for the whole CAM family here).  ``W`` is read from the graph by the caller and passed
at construction; only the activations are needed from the model (no gradients).

For such a head ``dY_c/dA_k = W[c, k] / (h w)`` everywhere, so Grad-CAM equals CAM up to
the factor ``1 / (h w)``.
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import BaseCAM, Forward


class CAM(BaseCAM):
    name = "cam"
    requires = (contract.ACTIVATIONS,)

    def __init__(self, forward: Forward, weights: np.ndarray, *, relu: bool = True):
        super().__init__(forward, relu=relu)
        w = np.asarray(weights, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"CAM needs the classifier weight matrix (classes x K), got shape {w.shape}")
        self.weights = w

    def channel_weights(self, batch):
        acts = batch[contract.ACTIVATIONS]
        classes = batch[contract.TARGET_CLASS].astype(np.int64)
        n_classes, k = self.weights.shape
        if acts.shape[1] != k:
            raise ValueError(
                f"CAM weight matrix has {k} columns but the target layer has {acts.shape[1]} channels; "
                "CAM needs the layer that feeds the global-average-pool + linear head"
            )
        bad = (classes < 0) | (classes >= n_classes)
        if bad.any():
            raise ValueError(f"target class {int(classes[bad][0])} out of range for {n_classes} classes")
        return self.weights[classes]
