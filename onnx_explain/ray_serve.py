"""The HTTP service on Ray Serve (``pip install onnx-explain[ray]``).

The deployment's ingress is the very FastAPI app of ``onnx-explain serve``
(:func:`onnx_explain.serve.app.create_app`), built on each replica by a builder
function: same routes (Open Inference Protocol v2, KServe v1, ``POST /explain``), same
errors, same limits.  Each replica keeps the app's own batcher (requests gathered into
ONNX Runtime batches inside the replica); Ray Serve spreads requests over ``replicas``.

    from onnx_explain.ray_serve import deploy
    deploy(ServeConfig(model="m.explain.onnx", host="127.0.0.1", port=8000), replicas=2)

This module imports ray only inside its functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from onnx_explain.serve.config import ServeConfig


def _builder(config: ServeConfig):
    def build():
        from onnx_explain.serve.app import create_app

        return create_app(config)

    return build


def _replica_init(self) -> None:
    """Runs in each replica before Serve starts the replica's own gRPC server (used between
    deployments), which Ray binds on all interfaces: on a loopback-only node it is moved to
    127.0.0.1, so that nothing of a local cluster is reachable from the network."""
    import ray

    if ray.util.get_node_ip_address() not in ("127.0.0.1", "::1"):
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_loopback", False):
        return

    def on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return original(server, address)

    on_loopback._loopback = True
    replica.add_port_to_grpc_server = on_loopback


def application(config: ServeConfig, *, replicas: int = 1, replica_cpus: float = 1.0,
                max_ongoing_requests: int | None = None) -> Any:
    """The bound Ray Serve application (not yet running)."""
    from ray import serve

    options: dict[str, Any] = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": replica_cpus}}
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = max_ongoing_requests
    else:  # the app queues and batches itself: let Serve hand it what its queue takes
        options["max_ongoing_requests"] = max(8, config.max_queue)
    cls = type("OnnxExplain", (), {"__doc__": "onnx-explain serve, as a Ray Serve deployment",
                                   "__init__": _replica_init})
    deployment = serve.deployment(**options)(serve.ingress(_builder(config))(cls))
    return deployment.bind()


def deploy(config: ServeConfig, *, replicas: int = 1, replica_cpus: float = 1.0, name: str = "onnx-explain",
           address: str | None = None, connect: bool = True) -> str:
    """Start Serve's HTTP proxy on ``config.host:config.port`` (127.0.0.1 unless told) and
    run the application there; returns its base URL.  ``connect``: join or start Ray first
    (see :func:`onnx_explain.ray_batch.init_ray`)."""
    import ray
    from ray import serve

    if connect and not ray.is_initialized():
        from onnx_explain.ray_batch import init_ray

        init_ray(address)
    serve.start(http_options={"host": config.host, "port": config.port})
    # the Python-side name of the model, as the plain server derives it
    serve.run(application(config, replicas=replicas, replica_cpus=replica_cpus), name=name, route_prefix="/",
              blocking=False)
    return f"http://{config.host}:{config.port}"


def run_cli(config: ServeConfig, *, replicas: int, address: str | None) -> None:
    """``onnx-explain serve --ray``: deploy, then wait until Ctrl-C / SIGTERM."""
    import signal
    import threading

    import ray
    from ray import serve

    stop = threading.Event()
    own_cluster = address in (None, "local") and not ray.is_initialized()
    try:  # a SIGTERM while deploying (Ray's own handler: SystemExit) still cleans up
        url = deploy(dataclasses.replace(config), replicas=replicas, address=address)
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        print(f"serving {config.model} on Ray Serve at {url} ({replicas} replica(s)); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        if ray.is_initialized():
            if not own_cluster:  # a shared cluster: take down this application only, without waiting
                try:
                    serve.delete("onnx-explain", _blocking=False)
                except Exception:  # noqa: BLE001 - nothing deployed yet
                    pass
            ray.shutdown()  # a cluster of our own goes with everything on it
