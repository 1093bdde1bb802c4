"""What a server is started with: one frozen record, checked once.

The defaults come from ``benchmarks/bench_serve.py --sweep`` on the project's 2-core CPU
(see README, "Serving"): two workers, each running ONNX Runtime on one core (an
explanation is part ONNX Runtime, part single-threaded numpy/OpenCV, so two pipelines
keep both cores busy where one pipeline with two ONNX Runtime threads leaves one idle),
and batches of up to 8 images gathered for at most 2 ms.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

#: The environment variable read for the bearer token when ``--token`` is not given.
TOKEN_ENV = "ONNX_EXPLAIN_TOKEN"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_MAX_QUEUE = 64
DEFAULT_WORKERS = 2
DEFAULT_MAX_BODY_BYTES = 32 << 20
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_IMAGES_PER_REQUEST = 64
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Everything ``create_app`` and ``run`` need.

    * ``max_batch_size``: images (tensor rows) one ONNX Runtime call may gather from
      concurrent requests; ``max_delay_ms``: how long the first request of a batch waits
      for company (0: only what is already queued).
    * ``max_queue``: images waiting for a worker; beyond it requests get 503 + Retry-After.
    * ``workers``: threads running batches (the bounded pool); ``threads``: ONNX Runtime
      intra-op threads per call (``None``: the cores shared out among the workers).
    * ``max_body_bytes``: larger request bodies get 413; ``timeout_s``: a request not
      answered by then gets 504 (its queued work is dropped).
    * ``token``: when set, every route but the health probes needs
      ``Authorization: Bearer <token>``.
    """

    model: Path
    name: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    device: str = "auto"
    threads: int | None = None
    workers: int = DEFAULT_WORKERS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    timeout_s: float = DEFAULT_TIMEOUT_S
    token: str | None = None
    warmup: bool = True
    access_log: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        checks = [
            (1 <= self.port <= 65535 or self.port == 0, f"port must be 0..65535, got {self.port}"),
            (1 <= self.workers <= 64, f"workers must be 1..64, got {self.workers}"),
            (1 <= self.max_batch_size <= 1024, f"max_batch_size must be 1..1024, got {self.max_batch_size}"),
            (0 <= self.max_delay_ms <= 10_000, f"max_delay_ms must be 0..10000, got {self.max_delay_ms}"),
            (1 <= self.max_queue <= 1_000_000, f"max_queue must be 1..1000000, got {self.max_queue}"),
            (1024 <= self.max_body_bytes <= 1 << 32, f"max_body_bytes must be 1 KiB..4 GiB, got {self.max_body_bytes}"),
            (1 <= self.max_images_per_request <= 1024,
             f"max_images_per_request must be 1..1024, got {self.max_images_per_request}"),
            (0 < self.timeout_s <= 86_400, f"timeout_s must be in (0, 86400], got {self.timeout_s}"),
            (self.threads is None or 1 <= self.threads <= 256, f"threads must be 1..256, got {self.threads}"),
            (self.token is None or len(self.token) >= 8, "a token must have at least 8 characters"),
            (self.name is None or bool(_NAME.fullmatch(self.name)),
             f"name must be 1-64 characters of A-Z a-z 0-9 . _ - (it is part of the URLs), got {self.name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def ort_threads(self) -> int:
        """ONNX Runtime threads per model call: ``threads``, else the cores per worker."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    @property
    def model_name(self) -> str:
        """The name in the routes: ``--name``, else the file name without ``.onnx``/``.explain``."""
        if self.name:
            return self.name
        stem = self.model.name
        for suffix in (".onnx", ".explain"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:64]
        return stem or "model"


def token_from_env(explicit: str | None) -> str | None:
    """``explicit`` if given, else :data:`TOKEN_ENV` (empty counts as unset)."""
    if explicit:
        return explicit
    return os.environ.get(TOKEN_ENV) or None
