"""An explain model in ONNX Runtime: providers, contract, and cheap partial runs.

ONNX Runtime executes every node of a graph whatever outputs are asked for, so a run that
only needs Grad-CAM's inputs would still pay for the input-gradient subgraph.  The
session therefore keeps one pruned copy of the graph per set of requested outputs
(``pruning.prune``).
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnx_explain import contract
from onnx_explain.errors import ModelError
from onnx_explain.pruning import prune

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
# ONNX Runtime threads: beyond a few per core a run only burns memory (each thread's stack
# and arena) and time.
MAX_THREADS = min(256, 4 * (os.cpu_count() or 1))
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


def load_model(path: str | os.PathLike, *, weights: bool = True) -> onnx.ModelProto:
    """Read an ONNX file: graph and metadata first, then (``weights``) its external data,
    each external tensor checked before a byte of it is read (:func:`load_weights`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such model file")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not an ONNX model")
    if os.path.getsize(path) == 0:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
    except MemoryError:
        raise ModelError(f"{path}: not enough memory to read this model") from None
    except Exception:
        raise ModelError(f"{path}: not an ONNX model (could not parse it)") from None
    if not model.HasField("graph"):  # protobuf parses many short byte strings as an empty message
        raise ModelError(f"{path}: not an ONNX model (no graph in it)")
    if weights:
        load_weights(model, path)
    return model


_FIXED_SIZE = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT32: 4, onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1, onnx.TensorProto.COMPLEX64: 8, onnx.TensorProto.COMPLEX128: 16,
}


def _all_tensors(graph: onnx.GraphProto):
    """Every tensor a graph holds: initializers, sparse ones, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _external_tensors(model: onnx.ModelProto):
    return [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_external_data(model: onnx.ModelProto, path: str) -> None:
    """Refuse, before reading any of it, external data that cannot be what it claims:
    a location outside the model's folder (absolute, ``..``, through a symbolic link), a
    missing file, a length that disagrees with the tensor's shape, bytes beyond the end
    of the file, a file with holes where the bytes should be (a sparse file made to look
    large), or more than this machine's available memory."""
    from onnx.external_data_helper import ExternalDataInfo

    tensors = _external_tensors(model)
    if not tensors:
        return
    base = os.path.dirname(os.path.abspath(path))
    real_base = os.path.realpath(base)
    total = 0
    for t in tensors:
        try:
            info = ExternalDataInfo(t)
        except Exception as e:  # noqa: BLE001 - malformed key/value pairs
            raise ModelError(f"{path}: external data of tensor {t.name!r} is malformed ({e})") from None
        loc = info.location or ""
        what = f"{path}: external data refused for tensor {t.name!r}"
        if not loc:
            raise ModelError(f"{what}: no location given")
        if "\x00" in loc:
            raise ModelError(f"{what}: location {loc!r} is not a file name")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
            raise ModelError(f"{what}: {loc!r} is an absolute path (external data must sit beside the model)")
        norm = os.path.normpath(loc.replace("\\", "/"))
        if norm == ".." or norm.startswith("../"):
            raise ModelError(f"{what}: {loc!r} is outside the model's folder")
        full = os.path.join(base, norm)
        if os.path.islink(full) or not os.path.realpath(full).startswith(real_base + os.sep):
            raise ModelError(f"{what}: {loc!r} is a symbolic link or leads outside the model's folder")
        try:
            st = os.stat(full)
        except OSError:
            raise ModelError(f"{path}: external data file {loc!r} of tensor {t.name!r} is missing") from None
        if not os.path.isfile(full):
            raise ModelError(f"{what}: {loc!r} is not a regular file")
        offset = int(info.offset or 0)
        count = 1
        for d in t.dims:
            count *= int(d)
        itemsize = _FIXED_SIZE.get(t.data_type)
        needed = count * itemsize if itemsize is not None else None
        length = int(info.length) if info.length is not None else None
        if offset < 0 or (length is not None and length < 0) or any(int(d) < 0 for d in t.dims):
            raise ModelError(f"{what}: negative offset, length or dimension")
        if needed is not None and length is not None and length != needed:
            raise ModelError(f"{what}: declares {length} bytes in {loc!r}, but its shape "
                             f"{list(t.dims)} needs {needed}")
        size = length if length is not None else (needed if needed is not None else st.st_size - offset)
        if offset + size > st.st_size:
            raise ModelError(f"{what}: declares {_bytes(size)} at offset {offset} in {loc!r}, "
                             f"which holds {_bytes(st.st_size)}")
        blocks = getattr(st, "st_blocks", None)
        if blocks is not None and size >= (256 << 20) and blocks * 512 < size // 16:
            raise ModelError(f"{what}: declares {_bytes(size)} in {loc!r}, but the file is sparse "
                             f"({_bytes(blocks * 512)} on disk): not real weights")
        total += size
    available = _memory_available()
    if available is not None and total > available:
        raise ModelError(f"{path}: its external data needs {_bytes(total)}, more than the {_bytes(available)} "
                         "of memory available here")


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def load_weights(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Read the external data of ``model`` (loaded from ``path`` without it), after
    :func:`check_external_data`; what onnx itself refuses is reported as that."""
    path = os.fspath(path)
    check_external_data(model, path)
    if not _external_tensors(model):
        return
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except MemoryError:
        raise ModelError(f"{path}: not enough memory to read its external data") from None
    except Exception as e:  # noqa: BLE001 - onnx's own refusals (location, bounds)
        raise ModelError(f"{path}: external data refused by onnx: {' '.join(str(e).split())}") from None


class ExplainSession:
    """Runs an explain model; satisfies the methods' ``Forward`` protocol.

    Inputs and image-shaped outputs are always channel-first (N x C x H x W) here; for a
    channel-last model the session transposes on the way in and out.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, device: str = "auto", threads: int | None = None,
                 session_config: dict[str, str] | None = None) -> None:
        if threads is not None and not (isinstance(threads, int) and 1 <= threads <= MAX_THREADS):
            raise ValueError(f"threads must be an integer in 1..{MAX_THREADS} (4x this machine's cores), got {threads!r}")
        self.path = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
        # Graph and metadata first: a bad contract is refused before any weight is read.
        self.model = model if isinstance(model, onnx.ModelProto) else load_model(model, weights=False)
        props = {p.key: p.value for p in self.model.metadata_props}
        where = self.path or "model"
        meta = contract.ExplainMetadata.from_props(props, where)
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
        images = [i for i in feeds if i.name != contract.TARGET]
        if not images or not self.model.graph.output:
            raise ModelError(f"{where}: an explain model needs an image input and outputs; this one has "
                             f"{len(images)} image input(s) and {len(self.model.graph.output)} output(s)")
        self.image_input = images[0].name
        self.output_names = [o.name for o in self.model.graph.output]
        self._check_contract(where, inits, images[0])
        if self.path is not None:
            load_weights(self.model, self.path)
        self.model_output = self.output_names[0]
        self.ends_in_softmax = "probabilities" in meta.outputs
        self.layout = self.preprocess.layout
        self.providers = providers_for(device)
        self.device = device
        self.threads = threads
        self.session_config = dict(session_config or {})  # ONNX Runtime session config entries
        self._sessions: dict[tuple[str, ...], ort.InferenceSession] = {}
        self._sessions_lock = threading.Lock()  # threads sharing a fresh session build each graph once
        dims = self.model.graph.output[0].type.tensor_type.shape.dim
        self.num_classes = int(dims[1].dim_value) if len(dims) > 1 and dims[1].dim_value else None
        batch = self.model.graph.input[0].type.tensor_type.shape.dim[0]
        self.fixed_batch = int(batch.dim_value) if batch.dim_value else None

    def _check_contract(self, where: str, inits: set[str], image: onnx.ValueInfoProto) -> None:
        """What the metadata says against what the graph has."""
        known = set(self.output_names) | inits | {n for node in self.model.graph.node for n in node.output}
        missing = [f"{role} -> {name!r}" for role, name in self.metadata.outputs.items() if name not in known]
        if missing:
            raise ModelError(f"{where}: metadata onnx_explain.outputs names values the graph does not have: "
                             f"{', '.join(missing)}")
        cam = self.metadata.cam
        if cam is not None:
            for key in ("weight", "bias"):
                name = cam.get(key)
                if name and name not in inits:
                    raise ModelError(f"{where}: metadata onnx_explain.cam.{key} names {name!r}, "
                                     "which is not an initializer of the graph")
        dims = image.type.tensor_type.shape.dim
        floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
        if len(dims) == 4 and image.type.tensor_type.elem_type in floats:  # not a uint8 `pixels` input
            hw = (dims[2], dims[3]) if self.preprocess.layout == "NCHW" else (dims[1], dims[2])
            fixed = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in hw)
            size = tuple(int(v) for v in self.preprocess.size)
            if all(fixed) and fixed != size:
                raise ModelError(f"{where}: metadata onnx_explain.preprocess.size {list(size)} contradicts the "
                                 f"input {image.name!r}, which is {fixed[0]}x{fixed[1]}")

    # -- sessions ---------------------------------------------------------------
    def _session(self, outputs: tuple[str, ...]) -> ort.InferenceSession:
        key = tuple(sorted(outputs))
        session = self._sessions.get(key)
        if session is not None:
            return session
        with self._sessions_lock:
            if key not in self._sessions:
                self._sessions[key] = self._build_session(key)
            return self._sessions[key]

    def _build_session(self, key: tuple[str, ...]) -> ort.InferenceSession:
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
            try:
                session = ort.InferenceSession(pruned.SerializeToString(), options, providers=self.providers)
            except MemoryError:
                raise ModelError(f"{self.path or 'model'}: not enough memory to load it into ONNX Runtime") from None
            except Exception as e:  # noqa: BLE001 - ONNX Runtime's refusal of the graph
                lines = [line for line in str(e).splitlines() if line.strip()]
                raise ModelError(f"{self.path or 'model'}: ONNX Runtime cannot load it: "
                                 f"{lines[0] if lines else type(e).__name__}") from None
        if self.device in _PROVIDER and _PROVIDER[self.device] not in session.get_providers():
            raise ModelError(f"device {self.device!r} asked for, but ONNX Runtime could not start it (no usable GPU?)")
        return session

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
