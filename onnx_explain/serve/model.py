"""The served model: loading, warming, the protocol's view of it, and the batch runners.

Three kinds of work reach the workers, each with its own batch key:

* ``infer`` (Open Inference Protocol): raw tensors in the model's own layout, the
  requested graph outputs only, run on the session pruned to them
  (:meth:`ExplainSession.run_graph`); requests asking for the same outputs are stacked.
* ``predict`` (KServe v1): images, top-k classes.
* ``explain`` (KServe v1, ``POST /explain``): images, one method with the same options;
  methods with many passes (Score-CAM, SmoothGrad, Integrated Gradients) get the images
  of several requests at once, so their passes are batched across requests too.

Every input is checked here before it is queued (names, datatypes, shapes, finite
values, class range), so a bad request is a 400 and never reaches a worker.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Hashable, Sequence

import numpy as np

from onnx_explain import contract
from onnx_explain.explainer import Explainer, Explanation, Prediction
from onnx_explain.images import LoadedImage
from onnx_explain.methods import METHODS
from onnx_explain.serve.config import ServeConfig
from onnx_explain.serve.errors import ApiError, bad_request, quoted
from onnx_explain.serve.tensors import datatype_of, shape_of

log = logging.getLogger("onnx_explain.serve")

#: Method options a request may set, with their bounds (more passes cost more time).
METHOD_OPTIONS: dict[str, dict[str, tuple[type, Any, Any]]] = {
    "smoothgrad": {"n_samples": (int, 1, 128), "stdev_spread": (float, 0.0, 1.0), "seed": (int, 0, 2**31 - 1)},
    "integrated_gradients": {"n_steps": (int, 1, 256), "method": (str, None, None)},
    "scorecam": {"weighting": (str, None, None)},
}
#: Methods that draw random noise: their batches never mix requests (see ``v1.explain_key``).
STOCHASTIC_METHODS = frozenset({"smoothgrad"})
#: Largest batch run while warming (a --max-batch-size of 1024 must not start with 1024 images).
MAX_WARM_BATCH = 32
#: Pruned sessions kept for Open Inference Protocol output sets beyond the warmed ones.
MAX_EXTRA_SESSIONS = 16


class ServedModel:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.name = config.model_name
        self.explainer: Explainer | None = None
        self.ready = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None
        self._sessions_lock = threading.Lock()
        self._extra_sets: collections.OrderedDict[tuple[str, ...], None] = collections.OrderedDict()
        self._warm_sets: set[tuple[str, ...]] = set()

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Load and warm the model (in a thread: the server answers health probes meanwhile)."""
        start = time.perf_counter()
        ex = Explainer(self.config.model, device=self.config.device, threads=self.config.ort_threads)
        self.explainer = ex
        session = ex.session
        self.session = session
        graph = session.model.graph
        inits = {i.name for i in graph.initializer}
        self.graph_inputs = [i for i in graph.input if i.name not in inits]
        self.graph_outputs = list(graph.output)
        self.input_meta = [
            {"name": i.name, "datatype": datatype_of(i), "shape": shape_of(i)} for i in self.graph_inputs
        ]
        self.output_meta = [
            {"name": o.name, "datatype": datatype_of(o), "shape": shape_of(o)} for o in self.graph_outputs
        ]
        self._inputs = {m["name"]: m for m in self.input_meta}
        self._outputs = {m["name"]: m for m in self.output_meta}
        self.image_input = session.image_input
        self.num_classes = session.num_classes
        self.methods = [m for m in METHODS if self.method_problem(m) is None]
        if self.config.warmup:
            self.warm()
        self._warm_sets = set(session._sessions)
        self.load_seconds = time.perf_counter() - start
        self.ready = True

    def warm(self) -> None:
        """One pass through the main paths, so that their first client waits for nothing:
        the prediction and Grad-CAM (whose session also serves an Open Inference Protocol
        request for Grad-CAM's inputs: logits, target_class, score, activations,
        grad_activations).  Other output sets get their pruned session on first use (the
        input gradient's alone adds about 70 MB to EfficientNet-Lite0's server)."""
        ex = self.explainer
        assert ex is not None
        h, w = ex.preprocess.size
        image = LoadedImage.from_array(np.full((h, w, 3), 128, np.uint8))
        ex.predict([image], top_k=1)
        if "gradcam" in self.methods:
            ex.explain([image], "gradcam")
            # then the largest batches, on every worker at once: ONNX Runtime's memory arena
            # reaches its size now rather than in steps under load
            n = min(self.config.max_batch_size, MAX_WARM_BATCH)
            full = [image] * n
            threads = [threading.Thread(target=ex.explain, args=(full, "gradcam"), kwargs={"batch_size": n})
                       for _ in range(self.config.workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    # ------------------------------------------------------------------ protocol views
    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": self.input_meta,
            "outputs": self.output_meta,
        }

    def label(self, c: int) -> str:
        assert self.explainer is not None
        return self.explainer.label(c)

    def method_problem(self, name: str) -> str | None:
        """Why ``name`` cannot run on this model, or ``None``."""
        if name not in METHODS:
            return f"unknown method {quoted(name)}; choose one of {', '.join(METHODS)}"
        needs = [o for o in METHODS[name].requires if o not in ("logits", "probabilities")]
        missing = [o for o in needs if o not in self.session.output_names]
        if missing:
            return f"method {name!r} needs the model output(s) {', '.join(missing)}, which this explain model lacks"
        if name == "cam" and self.session.cam_head is None:
            return "method 'cam' needs a global-average-pool + linear head after the target layer; use gradcam"
        return None

    # ------------------------------------------------------------------ checks
    def check_target(self, value: Any, where: str) -> int:
        """``None``/``"top1"``/-1 -> -1 (the top-1 class); else a class index in range."""
        if value is None or value == "top1":
            return -1
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{where}: target must be a class index, -1 or \"top1\", got {quoted(value)}")
        n = self.num_classes
        if value < -1 or (n is not None and value >= n):
            raise bad_request(f"{where}: target class {value} out of range: the model has {n} classes (0..{n - 1}), "
                              f"-1 is the top-1 class")
        return value

    def check_options(self, method: str, options: Any) -> dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise bad_request("'options' must be an object")
        allowed = METHOD_OPTIONS.get(method, {})
        out = {}
        for key, value in options.items():
            if key not in allowed:
                names = ", ".join(allowed) or "none"
                raise bad_request(f"method {method!r} takes no option {quoted(key)} (options: {names})")
            kind, lo, hi = allowed[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise bad_request(f"option {key!r} must be {kind.__name__}")
            if lo is not None and not lo <= value <= hi:
                raise bad_request(f"option {key!r} must be in {lo}..{hi}")
            if kind is str and len(value) > 64:
                raise bad_request(f"option {key!r} is too long")
            out[key] = value
        try:  # constructor checks (unknown weighting, integration method)
            self.explainer.method(method, **out)
        except (ValueError, TypeError) as err:
            raise bad_request(f"method {method!r}: {err}") from None
        return out

    def check_infer(self, arrays: dict[str, np.ndarray], outputs: Sequence[str]) -> tuple[dict[str, np.ndarray], int]:
        """Feeds for :meth:`run_infer` and their batch size, or a 400 saying what is wrong."""
        for name in arrays:
            if name not in self._inputs:
                raise bad_request(f"unknown input {quoted(name)}; the model's inputs are "
                                  f"{', '.join(self._inputs)}")
        if self.image_input not in arrays:
            raise bad_request(f"input {self.image_input!r} is required")
        for name in outputs:
            if name not in self._outputs:
                raise bad_request(f"unknown output {quoted(name)}; the model's outputs are {', '.join(self._outputs)}")
        rows = None
        feeds = {}
        for name, array in arrays.items():
            meta = self._inputs[name]
            declared = meta["shape"]
            if array.ndim != len(declared) or any(d > 0 and d != s for d, s in zip(declared, array.shape)):
                raise bad_request(f"input {name!r}: shape {list(array.shape)} does not match the model's {declared} "
                                  f"(-1: any size)")
            if rows is None:
                rows = int(array.shape[0])
            elif array.shape[0] != rows:
                raise bad_request(f"input {name!r}: batch {array.shape[0]} differs from the other inputs' {rows}")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise bad_request(f"input {name!r}: holds NaN or infinity")
            feeds[name] = array
        assert rows is not None
        if rows < 1:
            raise bad_request("the batch is empty")
        if rows > self.config.max_images_per_request:
            raise ApiError(413, f"batch of {rows} is more than this server takes in one request "
                                f"({self.config.max_images_per_request})")
        if contract.TARGET in self._inputs:
            if contract.TARGET in feeds:
                t = feeds[contract.TARGET]
                n = self.num_classes
                if n is not None and t.size and (t.max() >= n):
                    raise bad_request(f"input 'target': class {int(t.max())} out of range: the model has {n} "
                                      f"classes (0..{n - 1}); negative: the top-1 class")
            else:  # the contract: a missing target is the top-1 class
                feeds[contract.TARGET] = np.full((rows,), -1, dtype=np.int64)
        return feeds, rows

    # ------------------------------------------------------------------ runners (worker threads)
    def run(self, key: Hashable, payloads: Sequence[Any]) -> list[Any]:
        kind = key[0]
        if kind == "infer":
            return self.run_infer(key[1], payloads)
        if kind == "predict":
            return self._run_predict(payloads)
        if kind == "explain":
            return self._run_explain(key[1], dict(key[2]), payloads)
        raise ValueError(f"unknown work {kind!r}")

    def run_infer(self, outputs: tuple[str, ...], payloads: Sequence[dict[str, np.ndarray]]) -> list[dict]:
        names = tuple(outputs)
        self._track_session(names)
        if len(payloads) == 1:
            merged = payloads[0]
        else:
            merged = {k: np.concatenate([p[k] for p in payloads]) for k in payloads[0]}
        result = self.session.run_graph(merged, names)
        out, start = [], 0
        for p in payloads:
            n = next(iter(p.values())).shape[0]
            out.append({k: v[start : start + n] for k, v in result.items()})
            start += n
        return out

    def _track_session(self, names: tuple[str, ...]) -> None:
        """Keep at most :data:`MAX_EXTRA_SESSIONS` pruned sessions beyond the warmed ones."""
        key = tuple(sorted(names))
        if key in self._warm_sets:
            return
        with self._sessions_lock:
            self._extra_sets[key] = None
            self._extra_sets.move_to_end(key)
            while len(self._extra_sets) > MAX_EXTRA_SESSIONS:
                old, _ = self._extra_sets.popitem(last=False)
                self.session._sessions.pop(old, None)

    def _run_predict(self, payloads: Sequence[tuple[list[LoadedImage], int]]) -> list[list[Prediction]]:
        images = [im for p in payloads for im in p[0]]
        k = max(p[1] for p in payloads)
        preds = self.explainer.predict(images, top_k=k, batch_size=self.config.max_batch_size)
        out, start = [], 0
        for ims, top_k in payloads:
            part = preds[start : start + len(ims)]
            out.append([Prediction(p.path, p.classes[:top_k], p.labels[:top_k], p.probabilities[:top_k]) for p in part])
            start += len(ims)
        return out

    def _run_explain(self, method: str, options: dict[str, Any],
                     payloads: Sequence[tuple[list[LoadedImage], list[int], int]]) -> list[list[Explanation]]:
        images = [im for p in payloads for im in p[0]]
        targets = [t for p in payloads for t in p[1]]
        k = max(p[2] for p in payloads)
        results = self.explainer.explain(images, method=method, target=targets,
                                         batch_size=self.config.max_batch_size, top_k=k, **options)
        out, start = [], 0
        for ims, _, _ in payloads:
            out.append(results[start : start + len(ims)])
            start += len(ims)
        return out

    def close(self) -> None:
        if self.explainer is not None:
            self.explainer.close()
