"""Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279).

For each channel ``k`` of the target layer: upsample ``A_k`` to the input size, min-max
normalise it to [0, 1] (``H_k``, Eq. 4-5), run the masked input ``X * H_k`` through the
model and take the target class's score as the channel weight; the map is
``ReLU(sum_k w_k A_k)`` at feature-map resolution (as pytorch-grad-cam ``ScoreCAM``).

``weighting``:

* ``"probability"`` (default, the paper and its reference code): ``w_k =
  softmax(logits(X * H_k))[c]``, the target class's probability on the masked input;
* ``"channel_softmax"`` (pytorch-grad-cam ``ScoreCAM``): ``w = softmax_k(logit_c(X *
  H_k))``, the target logit softmaxed over the channels.

Channels whose activation map is constant carry no spatial information (their mask is
all zeros) and are skipped -- as the paper's reference code does -- which saves a pass per
dead ReLU channel; they get weight 0.  (pytorch-grad-cam evaluates them on a black image;
for the dead-channel case, ``A_k = 0``, that changes nothing in the map.)

The masked inputs are built chunk by chunk and sent through ``forward`` in batches of
``batch_size``; results do not depend on ``batch_size``.  Upsampling is bilinear with
``align_corners`` (default ``False``, like ``F.interpolate``/``cv2.resize``;
pytorch-grad-cam uses ``nn.UpsamplingBilinear2d``, i.e. ``align_corners=True``).
"""

from __future__ import annotations

import numpy as np

from onnx_explain import contract
from onnx_explain.methods.base import LOGITS, BaseCAM, Forward, softmax
from onnx_explain.methods.interpolate import resize_bilinear

WEIGHTINGS = ("probability", "channel_softmax")


class ScoreCAM(BaseCAM):
    name = "scorecam"
    requires = (contract.ACTIVATIONS, LOGITS)
    multi_pass = True

    def __init__(
        self,
        forward: Forward,
        *,
        weighting: str = "probability",
        align_corners: bool = False,
        relu: bool = True,
    ):
        super().__init__(forward, relu=relu)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown Score-CAM weighting {weighting!r}; choose one of {WEIGHTINGS}")
        self.weighting = weighting
        self.align_corners = bool(align_corners)

    def _outputs(self):
        return (contract.ACTIVATIONS, contract.TARGET_CLASS, contract.SCORE)

    def _cam(self, batch, batch_size, tracker):
        x = batch["inputs"]
        acts = batch[contract.ACTIVATIONS]
        classes = batch[contract.TARGET_CLASS].astype(np.int64)
        n, k = acts.shape[:2]
        size = x.shape[2:]
        flat = acts.reshape(n, k, -1)
        informative = flat.max(axis=2) > flat.min(axis=2)  # N x K
        jobs_i, jobs_k = np.nonzero(informative)
        tracker.grow(len(jobs_i))

        def make(idx):
            ii, kk = jobs_i[idx], jobs_k[idx]
            up = resize_bilinear(acts[ii, kk], size, align_corners=self.align_corners)  # B x H x W
            lo = up.min(axis=(1, 2), keepdims=True)
            span = up.max(axis=(1, 2), keepdims=True) - lo
            mask = np.where(span > 0, (up - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
            return x[ii] * mask[:, None], classes[ii]

        target_scores = np.zeros(len(jobs_i), dtype=np.float32)
        for idx, got in self._stream(len(jobs_i), make, (LOGITS,), batch_size, tracker):
            logits = got[LOGITS].reshape(len(idx), -1)
            cls = classes[jobs_i[idx]]
            if self.weighting == "probability":
                target_scores[idx] = softmax(logits)[np.arange(len(idx)), cls]
            else:
                target_scores[idx] = logits[np.arange(len(idx)), cls]

        weights = np.zeros((n, k), dtype=np.float32)
        if self.weighting == "probability":
            weights[jobs_i, jobs_k] = target_scores
        else:
            for i in range(n):
                sel = jobs_i == i
                if sel.any():
                    weights[i, jobs_k[sel]] = softmax(target_scores[sel])
        batch["_evaluated"] = informative.sum(axis=1)
        cam = np.einsum("nk,nkhw->nhw", weights, acts, optimize=True)
        return cam, weights

    def _extras(self, batch):
        return [{"channels_evaluated": int(c)} for c in batch["_evaluated"]]
