"""``torch.nn.Module`` -> plain ONNX (with preprocessing and labels) -> explain ONNX.

The plain export is the standard ``torch.onnx.export`` with a dynamic batch dimension,
input ``input`` and output ``logits``; the preprocessing JSON and the class labels go into
the model's ``metadata_props`` under the contract keys (``onnx_explain.preprocess``,
``onnx_explain.labels``). The augmenter (no torch) then turns it into the explain model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from onnx_explain.contract import METADATA_PREFIX, Preprocess
from onnx_explain.models import (
    MODELS,
    PRETRAINED,
    build,
    default_labels,
    default_preprocess,
    imagenet_labels,
    load_weights,
)

from .layer_names import resolve_layer

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# Node metadata the dynamo exporter writes that we drop from the shipped file: Python stack
# traces (absolute paths of the exporting machine) and FX dumps. The module scopes
# (pkg.torch.onnx.name_scopes, namespace, class_hierarchy) stay: they map module paths to values.
_DROPPED_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


@dataclasses.dataclass
class ExportResult:
    """What an export produced."""

    model: onnx.ModelProto  # the explain model (export_model) or the plain model (export_plain)
    path: Path | None  # where it was written, if anywhere
    module: nn.Module  # the eval-mode torch module that was exported
    input_size: tuple[int, int]  # (height, width)
    preprocess: Preprocess
    labels: list[str] | None
    layer: str | None = None  # ONNX value name handed to the augmenter (None: its default)
    module_path: str | None = None  # the torch module path ``layer`` was translated from
    export_seconds: float = 0.0  # time spent in torch.onnx.export


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """``"package.module:factory"`` -> the callable (it must return an ``nn.Module``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model factory {spec!r}: expected 'package.module:factory'")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model factory {spec!r}: cannot import module {module_name!r} ({e})") from e
    obj: Any = mod
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ValueError(f"model factory {spec!r}: module {module_name!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise ValueError(f"model factory {spec!r}: {attr!r} is not callable")
    return obj


def resolve_model(model: str | nn.Module, *, weights: str | Path | dict | None = None,
                  model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, str | None]:
    """(eval-mode module, built-in name or None) for a built-in name, a factory string or a module.

    For a built-in model, ``num_classes`` is read off ``weights`` when they do not say 1000.
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(model, nn.Module):
        module, name = model, None
        if weights is not None:
            load_weights(module, weights)
    elif isinstance(model, str) and model in MODELS:
        name = model
        if weights is not None and "num_classes" not in kwargs:
            n = _num_classes_from_weights(name, weights, kwargs)
            if n is not None:
                kwargs["num_classes"] = n
        module = build(name, weights=weights, **kwargs)
    elif isinstance(model, str) and ":" in model:
        name = None
        module = load_factory(model)(**kwargs)
        if not isinstance(module, nn.Module):
            raise ValueError(f"model factory {model!r} returned {type(module).__name__}, not a torch.nn.Module")
        if weights is not None:
            load_weights(module, weights)
    else:
        raise ValueError(f"unknown model {model!r}: expected a built-in name ({', '.join(sorted(MODELS))}) "
                         "or 'package.module:factory'")
    return module.eval(), name


def export_plain(model: str | nn.Module, out_path: str | Path | None = None, *,
                 weights: str | Path | dict | None = None, input_size: int | tuple[int, int] = 224,
                 opset: int = 18, dynamo: bool = True, keep_batchnorm: bool = False,
                 preprocess: Preprocess | None = None, labels: list[str] | None = None,
                 model_kwargs: dict[str, Any] | None = None, verbose: bool = False) -> ExportResult:
    """Export ``model`` to a plain ONNX classifier (no explanation outputs).

    ``model``: a built-in name (``onnx_explain.models.MODELS``), ``"package.module:factory"``
    (called with ``model_kwargs``) or an ``nn.Module`` (put in eval mode, ``weights`` loaded
    onto it in place); ``weights``: a ``state_dict`` (file) loaded strictly.
    Input ``input`` (N x 3 x H x W, N dynamic), output ``logits``.

    ``keep_batchnorm=True`` keeps BatchNormalization nodes instead of folding them into the
    Convs (for testing the BatchNorm gradient rule); it uses the TorchScript exporter
    (``dynamo=False``, ``TrainingMode.PRESERVE``, no constant folding) whatever ``dynamo`` says.
    ``preprocess``/``labels`` override what goes into the metadata; by default built-in
    models bring theirs, other models get the contract's default preprocessing (ImageNet
    mean/std, stretched to ``input_size``) and ImageNet labels when they have 1000 outputs.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
    if isinstance(model, str) and model in MODELS and "image_size" in inspect.signature(MODELS[model]).parameters:
        # static "same" padding (EfficientNet) computed for the size actually exported
        model_kwargs = {"image_size": (h, w), **(model_kwargs or {})}
    module, name = resolve_model(model, weights=weights, model_kwargs=model_kwargs)
    example = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))  # batch 2: never specialised
    with torch.no_grad():
        out = module(example)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(f"the model must return logits of shape (N, classes); got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    num_classes = int(out.shape[1])

    if preprocess is None:
        preprocess = default_preprocess(name, (h, w)) if name else Preprocess(size=(h, w))
    elif tuple(preprocess.size) != (h, w):
        raise ValueError(f"preprocess size {tuple(preprocess.size)} differs from the export input size {(h, w)}")
    if labels is None:
        labels = default_labels(name, num_classes) if name else (imagenet_labels() if num_classes == 1000 else None)
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} outputs")

    start = time.perf_counter()
    with _quiet(verbose):
        if keep_batchnorm or not dynamo:
            proto = _export_torchscript(module, example, opset, keep_batchnorm)
        else:
            proto = _export_dynamo(module, example, opset)
    seconds = time.perf_counter() - start

    _strip_node_metadata(proto)
    set_plain_metadata(proto, preprocess, labels)
    path = save(proto, out_path) if out_path is not None else None
    return ExportResult(model=proto, path=path, module=module, input_size=(h, w), preprocess=preprocess,
                        labels=labels, export_seconds=seconds)


def export_model(model: str | nn.Module, out_path: str | Path | None = None, *,
                 weights: str | Path | dict | None = None, input_size: int | tuple[int, int] = 224,
                 layer: str | None = None, input_gradients: bool = True, guided: bool = True,
                 gradcam: bool = True, opset: int = 18, dynamo: bool = True, keep_batchnorm: bool = False,
                 preprocess: Preprocess | None = None, labels: list[str] | None = None,
                 model_kwargs: dict[str, Any] | None = None, verbose: bool = False,
                 outputs: Sequence[str] | None = None, on_demand: bool = False, pixels: bool = False,
                 top_k: int = 5) -> ExportResult:
    """Export ``model`` to an explain model: :func:`export_plain`, then the augmenter.

    ``layer``: the target layer as a torch module path (``layer4``, ``features.denseblock4``,
    ``_blocks.15``) or an ONNX value name of the plain graph; ``None`` lets the augmenter
    choose. A module path is translated into the value holding that module's output.

    ``outputs`` (the exact set of added outputs; then leave ``input_gradients`` / ``guided``
    / ``gradcam`` out), ``on_demand``, ``pixels`` and ``top_k`` are the augmenter's
    (:func:`onnx_explain.augment.augment_model`).
    """
    from onnx_explain.augment import augment_model

    plain = export_plain(model, None, weights=weights, input_size=input_size, opset=opset, dynamo=dynamo,
                         keep_batchnorm=keep_batchnorm, preprocess=preprocess, labels=labels,
                         model_kwargs=model_kwargs, verbose=verbose)
    value = module_path = None
    if layer is not None:
        value = translate_layer(plain.model, plain.module, layer)
        module_path = layer if layer in dict(plain.module.named_modules()) else None
    if outputs is not None:  # the exact set: the switches' defaults do not add to it
        input_gradients = guided = gradcam = False
    explain = augment_model(plain.model, layer=value, input_gradients=input_gradients, guided=guided,
                            gradcam=gradcam, outputs=outputs, on_demand=on_demand, pixels=pixels, top_k=top_k)
    path = save(explain, out_path) if out_path is not None else None
    return dataclasses.replace(plain, model=explain, path=path, layer=value, module_path=module_path)


def translate_layer(proto: onnx.ModelProto, module: nn.Module, layer: str) -> str:
    """``layer`` (a module path of ``module`` or a value name of ``proto``, exported from it)
    -> the ONNX value name (see :mod:`onnx_explain.export.layer_names`)."""
    modules = dict(module.named_modules())
    containers = [n for n, m in modules.items() if type(m) in (nn.ModuleList, nn.ModuleDict)]  # never called
    return resolve_layer(proto, layer, [n for n in modules if n], containers)


def set_plain_metadata(proto: onnx.ModelProto, preprocess: Preprocess | None, labels: list[str] | None) -> None:
    """Write (replace) ``onnx_explain.preprocess`` / ``onnx_explain.labels`` on a plain model."""
    props = {METADATA_PREFIX + "preprocess": preprocess.to_json() if preprocess is not None else None,
             METADATA_PREFIX + "labels": json.dumps(list(labels)) if labels is not None else None}
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in kept + [(k, v) for k, v in props.items() if v is not None]:
        proto.metadata_props.add(key=key, value=value)


def save(proto: onnx.ModelProto, out_path: str | Path) -> Path:
    """Write ``proto`` (weights inline; as external data next to it beyond protobuf's 2 GB)."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        if proto.ByteSize() > 2**31 - 2**26:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, location=path.name + ".data")
        else:
            onnx.save_model(proto, str(tmp))
        tmp.replace(path)  # no half-written file at the destination
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- exporters ------------------------------------------------------------------------------


def _export_dynamo(module: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                opset_version=opset, optimize=True, verbose=False)
    return program.model_proto


def _export_torchscript(module: nn.Module, example: torch.Tensor, opset: int, keep_batchnorm: bool) -> onnx.ModelProto:
    f = io.BytesIO()
    kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, dynamo=False)
    if keep_batchnorm:
        # eval-mode BN exported as BatchNormalization (training_mode=0) rather than folded
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    torch.onnx.export(module, (example,), f, **kwargs)
    return onnx.load_from_string(f.getvalue())


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and "torchvision is not installed" logs."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _strip_node_metadata(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        kept = [(p.key, p.value) for p in node.metadata_props if p.key not in _DROPPED_NODE_METADATA]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            for key, value in kept:
                node.metadata_props.add(key=key, value=value)


def _num_classes_from_weights(name: str, weights: str | Path | dict, kwargs: dict[str, Any]) -> int | None:
    """The class count a built-in model needs to take ``weights``: the leading dimension of the
    tensors whose shapes differ from a 1000-class model's (its classifier), if they agree."""
    state = weights if isinstance(weights, dict) else _read_state_dict(weights)
    if state is None:
        return None  # load_weights will report the problem
    with torch.device("meta"):
        reference = MODELS[name](**{**kwargs, **({"pretrained": False} if name in PRETRAINED else {})})
    ref = reference.state_dict()
    dims = {tuple(v.shape)[0] for k, v in state.items()
            if k in ref and isinstance(v, torch.Tensor) and v.ndim >= 1 and tuple(v.shape) != tuple(ref[k].shape)}
    return dims.pop() if len(dims) == 1 else None


def _read_state_dict(path: str | Path) -> dict | None:
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        return None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state if isinstance(state, dict) else None
