"""An explain model in ONNX Runtime: providers, contract, and cheap partial runs.

ONNX Runtime executes every node of a graph whatever outputs are asked for, so a run that
only needs Grad-CAM's inputs would still pay for the input-gradient subgraph.  The
session therefore keeps one pruned copy of the graph per set of requested outputs
(``pruning.prune``).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain import contract
from onnx_explain.errors import ModelError
from onnx_explain.pruning import prune

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


# Outputs whose backward runs through the whole network, ReLU masks and all.
_THROUGH_THE_NETWORK = (contract.GRAD_INPUT, contract.GUIDED_GRAD_INPUT)


def _blocked_mask_session_or_none(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str]):
    """ONNX Runtime CPU session with the gradient masks kept in its NCHWc layout
    (``nchwc_masks``); ``None`` (plain session) where that does not apply or fails."""
    import logging
    import tempfile

    from onnx_explain.nchwc_masks import blocked_mask_session

    try:
        with tempfile.TemporaryDirectory(prefix="onnx-explain-") as scratch:
            return blocked_mask_session(model, options, providers, scratch)
    except Exception as err:  # an optimization only: the plain session computes the same values
        logging.getLogger(__name__).debug("NCHWc mask layout not applied: %s", err)
        return None


def providers_for(device: str) -> list[str]:
    """ONNX Runtime providers for ``device``; asking for a GPU where there is none is an error."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
    if device not in _PROVIDER:
        raise ModelError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    wanted = _PROVIDER[device]
    if wanted not in available:
        raise ModelError(
            f"device {device!r} asked for, but this onnxruntime has no {wanted} "
            f"(install onnxruntime-gpu on a machine with an NVIDIA GPU; available: {', '.join(available)})"
        )
    chain = [wanted] + (["CUDAExecutionProvider"] if device == "tensorrt" and "CUDAExecutionProvider" in available else [])
    return chain + ["CPUExecutionProvider"]


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such model file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not an ONNX model")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(path)
    except Exception:
        raise ModelError(f"{path}: not an ONNX model (could not parse it)") from None
    if not model.HasField("graph"):  # protobuf parses many short byte strings as an empty message
        raise ModelError(f"{path}: not an ONNX model (no graph in it)")
    return model


class ExplainSession:
    """Runs an explain model; satisfies the methods' ``Forward`` protocol.

    Inputs and image-shaped outputs are always channel-first (N x C x H x W) here; for a
    channel-last model the session transposes on the way in and out.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, device: str = "auto", threads: int | None = None,
                 session_config: dict[str, str] | None = None) -> None:
        self.path = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
        self.model = model if isinstance(model, onnx.ModelProto) else load_model(model)
        props = {p.key: p.value for p in self.model.metadata_props}
        meta = contract.ExplainMetadata.from_props(props)
        where = self.path or "model"
        if meta is None:
            raise ModelError(
                f"{where}: a plain ONNX model, not an explain model; "
                f"run `onnx-explain augment {where} -o explain.onnx` first"
            )
        self.metadata = meta
        self.preprocess = meta.preprocess or contract.Preprocess()
        self.labels = meta.labels
        self.cam_head = meta.cam
        inits = {i.name for i in self.model.graph.initializer}
        feeds = [i for i in self.model.graph.input if i.name not in inits]
        self.image_input = next(i.name for i in feeds if i.name != contract.TARGET)
        self.output_names = [o.name for o in self.model.graph.output]
        self.model_output = self.output_names[0]
        self.ends_in_softmax = "probabilities" in meta.outputs
        self.layout = self.preprocess.layout
        self.providers = providers_for(device)
        self.device = device
        self.threads = threads
        self.session_config = dict(session_config or {})  # ONNX Runtime session config entries
        self._sessions: dict[tuple[str, ...], ort.InferenceSession] = {}
        dims = self.model.graph.output[0].type.tensor_type.shape.dim
        self.num_classes = int(dims[1].dim_value) if len(dims) > 1 and dims[1].dim_value else None
        batch = self.model.graph.input[0].type.tensor_type.shape.dim[0]
        self.fixed_batch = int(batch.dim_value) if batch.dim_value else None

    # -- sessions ---------------------------------------------------------------
    def _session(self, outputs: tuple[str, ...]) -> ort.InferenceSession:
        key = tuple(sorted(outputs))
        if key not in self._sessions:
            graph_inputs = [self.image_input] + ([contract.TARGET] if self._needs_target(key) else [])
            pruned = prune(self.model, graph_inputs, key)
            pruned.metadata_props.clear()
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            options.log_severity_level = 3
            for k, v in self.session_config.items():
                options.add_session_config_entry(k, v)
            session = None
            if self.providers == ["CPUExecutionProvider"] and any(o in key for o in _THROUGH_THE_NETWORK):
                session = _blocked_mask_session_or_none(pruned, options, self.providers)
            if session is None:
                session = ort.InferenceSession(pruned.SerializeToString(), options, providers=self.providers)
            if self.device in _PROVIDER and _PROVIDER[self.device] not in session.get_providers():
                raise ModelError(f"device {self.device!r} asked for, but ONNX Runtime could not start it (no usable GPU?)")
            self._sessions[key] = session
        return self._sessions[key]

    def _needs_target(self, outputs: Sequence[str]) -> bool:
        return any(o != self.model_output for o in outputs)

    @property
    def active_providers(self) -> list[str]:
        return self._session((self.model_output,)).get_providers()

    # -- running ------------------------------------------------------------------
    def __call__(self, inputs: np.ndarray, target: np.ndarray | None = None, outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run on a channel-first float batch; ``outputs`` are contract names plus
        ``"logits"`` and ``"probabilities"`` (the latter computed here when the model
        returns logits)."""
        wanted = list(outputs) or [self.model_output]
        names = []
        for o in wanted:
            if o in ("logits", "probabilities"):
                names.append(self.model_output)
            else:
                if o not in self.output_names:
                    raise ModelError(f"the model has no {o!r} output; re-run augment with the option that adds it")
                names.append(o)
        names = list(dict.fromkeys(names))
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        if self.layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        feeds = {self.image_input: x}
        if self._needs_target(names):
            n = x.shape[0]
            t = np.full((n,), -1, dtype=np.int64) if target is None else np.asarray(target, dtype=np.int64).reshape(-1)
            if t.shape[0] != n:
                raise ValueError(f"target has {t.shape[0]} entries for a batch of {n}")
            if self.num_classes is not None and np.any(t >= self.num_classes):
                bad = int(t[t >= self.num_classes][0])
                raise ModelError(f"target class {bad} out of range: the model has {self.num_classes} classes (0..{self.num_classes - 1})")
            feeds[contract.TARGET] = t
        if self.fixed_batch and x.shape[0] != self.fixed_batch:
            return self._run_fixed_batch(x, feeds, names, wanted)
        results = dict(zip(names, self._session(tuple(names)).run(names, feeds)))
        return self._finish(results, wanted)

    def _run_fixed_batch(self, x, feeds, names, wanted):
        """Models exported with a fixed batch size: run image by image and stack."""
        parts = []
        for i in range(x.shape[0]):
            f = {k: v[i : i + 1] for k, v in feeds.items()}
            parts.append(dict(zip(names, self._session(tuple(names)).run(names, f))))
        results = {k: np.concatenate([p[k] for p in parts]) for k in names}
        return self._finish(results, wanted)

    def _finish(self, results: dict[str, np.ndarray], wanted: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for o in wanted:
            if o == "logits":
                out[o] = results[self.model_output]  # probabilities for a softmax model
            elif o == "probabilities":
                v = results[self.model_output]
                out[o] = v if self.ends_in_softmax else _softmax(v)
            else:
                v = results[o]
                if self.layout == "NHWC" and o in (contract.GRAD_INPUT, contract.GUIDED_GRAD_INPUT):
                    v = v.transpose(0, 3, 1, 2)
                out[o] = v
        return out

    def run_graph(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's own outputs ``outputs`` (names as in the file) for ``feeds`` in the
        model's own layout, from the session pruned to them: what a serving protocol that
        exposes the model as it is needs (``onnx-explain serve``)."""
        names = list(dict.fromkeys(outputs))
        session = self._session(tuple(names))
        wanted = {i.name for i in session.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        n = next(iter(feeds.values())).shape[0] if feeds else 0
        if self.fixed_batch and n != self.fixed_batch:
            parts = [session.run(names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
            return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}
        return dict(zip(names, session.run(names, feeds)))

    def cam_weights(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Classifier weights (classes x K) and bias of a GAP + linear head, for CAM."""
        if self.cam_head is None:
            raise ModelError("CAM needs a global-average-pool + linear head right after the target layer; this model has none (use gradcam)")
        inits = {i.name: i for i in self.model.graph.initializer}
        w = onnx.numpy_helper.to_array(inits[self.cam_head["weight"]]).astype(np.float32)
        if not self.cam_head["transposed"]:
            w = w.T
        b = self.cam_head.get("bias")
        return w, (onnx.numpy_helper.to_array(inits[b]).astype(np.float32) if b and b in inits else None)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
