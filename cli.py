"""The onnx-explain command line: export, augment, explain, score, inspect, evaluate.

Exit status: 0 all done; 1 some inputs failed (the rest were done); 2 usage or model error;
130 interrupted (Ctrl-C). Errors are one line naming the file and the problem (control
characters in names and labels escaped); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head -1` gives
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C, as shells report it
DEFAULT_MODEL = "efficientnet_lite0"
# Bounds on user numbers: beyond them a run only burns memory and time.
MAX_THREADS = min(256, 4 * (os.cpu_count() or 1))
MAX_BATCH = 1024
MAX_SIDE = 16384  # input / resize side in pixels
MAX_PIXELS_CAP = 1_000_000_000  # --max-pixels at most: one such image is 3 GB decoded
RESIZE_POLICIES = ("stretch", "center_crop", "letterbox")
DEMO_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")


class Failure(Exception):
    """A usage or model error: printed as one line, exit status 2."""


def _exit_on_broken_pipe() -> NoReturn:
    """Whoever reads our output stopped reading (`onnx-explain inspect M | head -1`): end
    quietly, as command-line tools do, with no message and no second error when Python
    flushes stdout on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured output)
        pass
    sys.exit(EXIT_BROKEN_PIPE)


class _Commands(click.Group):
    """The command group; a closed pipe on any command (or on --help) ends it quietly."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            _exit_on_broken_pipe()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _exit_on_broken_pipe()
        except KeyboardInterrupt:  # Ctrl-C: not "some inputs failed"; what is written is whole
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def _threads_option(fn: Callable) -> Callable:
    return click.option(
        "--threads", type=click.IntRange(1, MAX_THREADS),
        help="ONNX Runtime threads, at most 4x this machine's cores [ONNX Runtime's choice: all cores].",
    )(fn)


def _batch_option(default: int, what: str = "Images per ONNX Runtime call.") -> Callable:
    return click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=default, show_default=True,
                        help=what)


def _top_k_option(fn: Callable) -> Callable:
    return click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
                        help="Classes to list per image, at most the model's number of classes "
                             "(the default is cut to it).")(fn)


def _check_top_k(top_k: int, n_classes: int | None) -> int:
    """``--top-k`` within the model's classes: an error when asked for more, the default cut."""
    if n_classes is None or top_k <= n_classes:
        return top_k
    ctx = click.get_current_context()
    source = ctx.get_parameter_source("top_k")
    if source in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP):
        return n_classes
    raise Failure(f"--top-k {top_k} is more than the model's {n_classes} classes")


def _fail_cleanly(fn: Callable) -> Callable:
    """Turn our errors into one line on stderr and exit 2 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, BrokenPipeError):
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary to the user
            from onnx_explain.errors import ExplainError
            from onnx_explain.images import ImageError
            from onnx_explain.outputs import FolderBusy, for_terminal

            if (ctx.obj or {}).get("debug"):
                raise
            known = isinstance(exc, (ExplainError, ImageError, Failure, FolderBusy, ValueError, FileNotFoundError,
                                     OSError))
            msg = str(exc) if known else f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
            click.echo(f"error: {for_terminal(msg)}", err=True)
            ctx.exit(EXIT_ERROR)

    return wrapper


@contextlib.contextmanager
def _naming(model: str):
    """A model error raised while analysing ``model`` (a proto, which knows no path) names the file."""
    from onnx_explain.errors import ModelError

    try:
        yield
    except ModelError as exc:
        raise Failure(f"{model}: {exc}") from exc  # --debug shows where it came from


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


def _echo_err(msg: str) -> None:
    """One line on stderr, on a line of its own even while a progress bar is drawn there."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        click.echo(msg, err=True)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="onnx-explain")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Explain CNN image classifiers with one ONNX model, without the training framework.

    \b
    Typical session:
      onnx-explain export efficientnet_lite0 -o explain.onnx   # torch side, once
      onnx-explain explain explain.onnx photos/ --out heatmaps/
      onnx-explain score explain.onnx cat.jpg --json

    \b
    Any ONNX classifier works too:
      onnx-explain augment resnet.onnx -o explain.onnx
      onnx-explain inspect explain.onnx
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ----------------------------------------------------------------------------- export


_OUTPUT_NAMES = ("target_class, score, activations, grad_activations, grad_input, guided_grad_input, gradcam, "
                 "gradcam_plusplus, layercam, probabilities, top_k")


def _explain_outputs_options(fn: Callable) -> Callable:
    """--outputs, --on-demand/--always, --pixels, --top-k (export and augment)."""
    options = [
        click.option("--outputs", metavar="LIST",
                     help="Exactly these outputs (comma-separated) besides the model's own: " + _OUTPUT_NAMES
                          + ". E.g. --outputs gradcam,probabilities,top_k --pixels for a lean file a browser or "
                          "phone runs at the cost of a prediction. [target_class, score, activations, "
                          "grad_activations, grad_input, guided_grad_input, gradcam; or as the two switches above say]"),
        click.option("--on-demand/--always", default=True, show_default=True,
                     help="grad_input / guided_grad_input only when the run feeds the flag input "
                          "compute_grad_input / compute_guided_grad_input = true (else they come back with 0 rows), "
                          "so that a consumer that runs every node (plain ONNX Runtime, onnxruntime-web, Triton) pays "
                          "a prediction for Grad-CAM; or on every run. The Python runtime computes what it asks for "
                          "either way."),
        click.option("--pixels", is_flag=True,
                     help="Preprocessing in the graph: the image input becomes pixels, uint8 N x H x W x 3 RGB at the "
                          "model's input size (resizing stays with the consumer)."),
        click.option("--top-k", type=click.IntRange(1, 1000), default=5, show_default=True,
                     help="How many classes the top_k output gives."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _outputs_request(outputs: str | None, input_gradients: bool, gradcam: bool) -> dict[str, Any]:
    """The augmenter's output arguments from the command line's: --outputs is the exact set
    and cannot be combined with --[no-]input-gradients / --[no-]gradcam given explicitly."""
    if outputs is None:
        return dict(input_gradients=input_gradients, guided=input_gradients, gradcam=gradcam)
    ctx = click.get_current_context()
    given = [f"--{'' if ctx.params.get(name) else 'no-'}{name.replace('_', '-')}"
             for name in ("input_gradients", "gradcam")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise Failure(f"--outputs is the exact set of outputs: leave out {' and '.join(given)}")
    from onnx_explain.augment import output_choices

    names = [n.strip() for n in outputs.split(",") if n.strip()]
    unknown = [n for n in names if n not in output_choices()]
    if unknown or not names:
        raise Failure(f"--outputs: {'unknown output ' + repr(unknown[0]) if unknown else 'no output named'}; "
                      f"choose from {_OUTPUT_NAMES}")
    return dict(outputs=names, input_gradients=False, guided=False, gradcam=False)


def _describe_outputs(proto) -> str:
    """One line: the added outputs, which are on demand, the image input."""
    from onnx_explain import contract
    from onnx_explain.gates import read_gates

    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in proto.metadata_props}) or contract.ExplainMetadata()
    gates = read_gates(proto)
    own = {v for k, v in meta.outputs.items() if k in ("logits", "probabilities")}
    names = [o.name + (f" (on demand: {gates[o.name]}=true)" if o.name in gates else "")
             for o in proto.graph.output if o.name not in own]
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    return f"inputs {', '.join(inputs)}; outputs {', '.join(names)}"


@main.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), required=True, help="Explain model to write (.onnx).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="A state_dict file (.pt/.pth) to load first.")
@click.option("--input-size", type=click.IntRange(8, MAX_SIDE), default=None,
              help="Square input size in pixels [the model's default, 224].")
@click.option("--layer", help="Target layer: a torch module path (layer4) or an ONNX value name [auto].")
@click.option("--input-gradients/--no-input-gradients", default=True, show_default=True,
              help="Add grad_input and guided_grad_input (saliency-style methods).")
@click.option("--gradcam/--no-gradcam", default=True, show_default=True, help="Add the in-graph Grad-CAM map.")
@click.option("--opset", type=click.IntRange(13, 21), default=18, show_default=True,
              help="ONNX opset of the exported model.")
@_explain_outputs_options
@_fail_cleanly
def export(model: str, out: str, weights: str | None, input_size: int | None, layer: str | None,
           input_gradients: bool, gradcam: bool, opset: int, outputs: str | None, on_demand: bool, pixels: bool,
           top_k: int) -> None:
    """Export a PyTorch model to an explain model (needs torch).

    MODEL is a built-in name (see below) or "package.module:factory", a callable that
    returns a torch.nn.Module.  Built-in: resnet18, resnet50, vgg16_bn, mobilenet_v2,
    mobilenet_v3_small, densenet121, squeezenet1_1, convnext_tiny, convnext_nano,
    efficientnet_lite0 (pretrained ImageNet weights, the default).
    """
    try:
        from onnx_explain.export import export_model
    except ImportError as exc:
        raise Failure(f"export needs torch ({exc}); install with: pip install 'onnx-explain[export]'") from None
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = dict(weights=weights, layer=layer, opset=opset, on_demand=on_demand, pixels=pixels,
                                  top_k=top_k, **_outputs_request(outputs, input_gradients, gradcam))
    if input_size:
        kwargs["input_size"] = input_size
    result = export_model(model, out, **kwargs)
    from onnx_explain import contract

    meta = contract.ExplainMetadata.from_props({p.key: p.value for p in result.model.metadata_props})
    layer_name = meta.target_layer + (f" = {result.module_path}" if result.module_path else "")
    click.echo(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, target layer {layer_name}) in {time.perf_counter() - t0:.1f} s")
    click.echo(_describe_outputs(result.model))


# ----------------------------------------------------------------------------- augment


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise Failure(f"expected comma-separated numbers, got {text!r}") from None


def _size_option(text: str) -> tuple[int, int]:
    parts = text.lower().replace(" ", "").split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        h = w = 0
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise Failure(f"--size must be N or HxW with sides 1..{MAX_SIDE}, e.g. 224 or 48x320; got {text!r}")
    return h, w


def _pad_option(text: str) -> float | tuple[float, ...]:
    values = _floats(text)
    if not values or len(values) not in (1, 3) or not all(0.0 <= v <= 255.0 for v in values):
        raise Failure(f"--pad-value must be one number or three, each 0..255 (pixel units), e.g. 127 or "
                      f"124,116,104; got {text!r}")
    return values[0] if len(values) == 1 else values


def _image_input_dims(proto) -> tuple[str, list[int | str | None], str] | None:
    """(name, dims, layout) of the plain model's image input as the file declares it, or
    ``None`` when there is not exactly one (the augmenter then says what is wrong)."""
    import onnx
    import onnx_ir as ir

    from onnx_explain.augment.graph_facts import input_layout

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    inits = {i.name for i in proto.graph.initializer}
    found = []
    for v in proto.graph.input:
        t = v.type.tensor_type
        if v.name in inits or t.elem_type not in floats or not t.HasField("shape") or len(t.shape.dim) != 4:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        found.append((v.name, dims))
    if len(found) != 1:
        return None
    name, dims = found[0]
    return name, dims, input_layout(ir.Value(name=name, shape=ir.Shape(dims)))


def _declared_classes(proto) -> int | None:
    """The class count the model's first output declares (N x classes), if it does."""
    if not proto.graph.output:
        return None
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
        return int(dims[1].dim_value)
    return None


_AUGMENT_EXAMPLES = """
\b
Examples:
  # torchvision's ImageNet recipe: shorter side to 256, then the centre 224x224
  onnx-explain augment resnet50.onnx -o explain.onnx --resize-shorter 256
  # a text recognizer: fit in 48x320, grey padding on the right and below
  onnx-explain augment rec.onnx -o explain.onnx --size 48x320 --resize letterbox \\
      --pad-value 127 --pad-align topleft
  # class names from the file's own metadata ("names"): nothing to give
  onnx-explain augment yolov8n-cls.onnx -o explain.onnx
"""


@main.command(epilog=_AUGMENT_EXAMPLES)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), required=True, help="Explain model to write.")
@click.option("--layer", help="ONNX value name of the target layer [auto: see `inspect`].")
@click.option("--input-gradients/--no-input-gradients", default=True, show_default=True,
              help="Add grad_input and guided_grad_input.")
@click.option("--gradcam/--no-gradcam", default=True, show_default=True, help="Add the in-graph Grad-CAM map.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Class names, exactly one per class: a JSON list, a JSON {index: name} object, or one name "
                   "per line. [the model's own list, if its metadata has one under labels, classes, "
                   "class_names or names]")
@click.option("--size", help="Input size HxW or N. Only for an input whose height and width are not fixed "
                             "(a fixed one is read from the model).")
@click.option("--mean", help="Per-channel mean after scaling, in the model's channel order, e.g. 0.485,0.456,0.406 "
                             "[ImageNet].")
@click.option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225 [ImageNet].")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True),
              help="Pixel scale before mean/std [1/255].")
@click.option("--color", type=click.Choice(["RGB", "BGR"]), help="Channel order the model expects [RGB].")
@click.option("--resize", type=click.Choice(RESIZE_POLICIES),
              help="stretch: straight to the input size; center_crop: shorter side to the input size (or to "
                   "--resize-shorter), then the centre; letterbox: fit inside keeping the aspect ratio, pad the "
                   "rest (--pad-value, --pad-align). [stretch]")
@click.option("--resize-shorter", type=click.IntRange(1, MAX_SIDE), metavar="S",
              help="center_crop: first resize the shorter side to S pixels, keeping the aspect ratio, then crop "
                   "the centre (the ImageNet recipe: 256 for a 224 input). Implies --resize center_crop.")
@click.option("--pad-value", metavar="V|V1,V2,V3",
              help="Colour of the padding in pixel units 0..255 (before --scale): one value, or one per channel "
                   "in the model's channel order (--color), e.g. 114 or 127. [0]")
@click.option("--pad-align", type=click.Choice(["center", "topleft"]),
              help="Where the image sits on a padded input: centred, or in the top-left corner with the padding "
                   "on the right and below (text recognition models). [center]")
@_explain_outputs_options
@_fail_cleanly
def augment(model: str, out: str, layer: str | None, input_gradients: bool, gradcam: bool, labels: str | None,
            size: str | None, mean: str | None, std: str | None, scale: float | None, color: str | None,
            resize: str | None, resize_shorter: int | None, pad_value: str | None, pad_align: str | None,
            outputs: str | None, on_demand: bool, pixels: bool, top_k: int) -> None:
    """Rewrite any ONNX image classifier into an explain model (no torch needed).

    Adds the `target` input and the `target_class`, `score`, `activations`,
    `grad_activations` outputs (plus `grad_input`, `guided_grad_input`, `gradcam`),
    with the preprocessing and labels stored in the model's metadata. Preprocessing
    options not given keep what the model's metadata says, else the defaults shown.
    """
    import dataclasses

    from onnx_explain import contract
    from onnx_explain.augment import SmallTargetLayerWarning, augment_model
    from onnx_explain.labels import read_labels_file
    from onnx_explain.outputs import write_bytes
    from onnx_explain.preprocess import check_preprocess
    from onnx_explain.session import load_model

    plain = load_model(model)
    props = {p.key: p.value for p in plain.metadata_props}
    meta = contract.read_plain_metadata(props)
    pre = meta.get("preprocess")
    image = _image_input_dims(plain)

    changes: dict[str, Any] = {}
    if size:  # one that contradicts a fixed input is refused by augment_model, before any work
        changes["size"] = _size_option(size)
    if mean:
        changes["mean"] = _floats(mean)
    if std:
        changes["std"] = _floats(std)
    if scale is not None:
        changes["scale"] = scale
    if color:
        changes["color"] = color
    if resize_shorter is not None:
        if resize not in (None, "center_crop"):
            raise Failure(f"--resize-shorter applies to --resize center_crop, not {resize}")
        resize = "center_crop"
        changes["resize_shorter"] = resize_shorter
    if resize:
        changes["resize"] = resize
        if resize != "center_crop":
            changes["resize_shorter"] = None
    if pad_value is not None:
        changes["pad_value"] = _pad_option(pad_value)
    if pad_align:
        changes["pad_align"] = pad_align
    if changes:
        if pre is None:
            layout = image[2] if image is not None else "NCHW"
            hw = (image[1][2:4] if layout == "NCHW" else image[1][1:3]) if image is not None else (224, 224)
            hw = changes.get("size") or hw
            if not all(isinstance(d, int) and d > 0 for d in hw):
                raise Failure(f"{model}: the image input {image[0]!r} has a dynamic height/width "
                              f"[{', '.join(str(d) if d else '?' for d in image[1])}]: give the size the model "
                              "expects with --size HxW")
            pre = contract.Preprocess(size=tuple(hw), layout=layout)
        pre = dataclasses.replace(pre, **changes)
        if (pad_value is not None or pad_align) and pre.resize == "stretch":
            raise Failure("--pad-value and --pad-align apply where the image is padded: --resize letterbox, "
                          "or center_crop with --resize-shorter below the input size; stretch never pads")
        try:
            check_preprocess(pre)
        except ValueError as exc:
            raise Failure(f"preprocessing options: {exc}") from None

    # Labels: a --labels file must have one name per class; else the model's own, if any.
    classes = _declared_classes(plain)  # None when the file does not declare it: known after augmenting
    own = "labels" in meta  # written by our exporter: augment_model keeps them
    names = read_labels_file(labels) if labels else None
    found_in: str | None = None

    def settle_labels(n_classes: int | None) -> None:
        nonlocal names, found_in
        if n_classes is None:
            return
        if labels and len(names or []) != n_classes:
            raise Failure(f"{labels}: {len(names or [])} labels, but {model} has {n_classes} classes")
        if not labels and not own and found_in is None:
            names, found_in = _labels_in_metadata(props, n_classes)

    settle_labels(classes)  # before the work, when the file says how many classes
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, _naming(model):
        warnings.simplefilter("always", SmallTargetLayerWarning)
        explain = augment_model(plain, layer=layer, preprocess=pre, labels=names, on_demand=on_demand, pixels=pixels,
                                top_k=top_k, **_outputs_request(outputs, input_gradients, gradcam))
    for w in caught:
        if issubclass(w.category, SmallTargetLayerWarning):
            click.echo(f"warning: {model}: {w.message}", err=True)
    if pre is None:  # neither the file nor the command line said: say what was assumed
        used = contract.ExplainMetadata.from_props({p.key: p.value for p in explain.metadata_props}).preprocess
        click.echo(f"note: {model} carries no preprocessing: assumed {used.color}, scale {used.scale:.6g}, "
                   f"mean {list(used.mean)}, std {list(used.std)}, resize {used.resize} (torchvision's ImageNet "
                   "recipe); where the model was trained otherwise (Keras' caffe or [-1, 1] inputs, BGR, ...), "
                   "give --scale/--mean/--std/--color/--resize", err=True)
    if classes is None:
        settle_labels(_declared_classes(explain))
        if found_in is not None:  # found only now: into the explain model's metadata
            done = contract.ExplainMetadata.from_props({p.key: p.value for p in explain.metadata_props})
            done.labels = names
            current = {p.key: p for p in explain.metadata_props}
            for key, value in done.to_props().items():
                (current.get(key) or explain.metadata_props.add(key=key)).value = value
    if found_in is not None:
        click.echo(f"labels: {len(names or [])} class names from the model's metadata key {found_in!r}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_bytes(out, explain.SerializeToString())
    click.echo(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    click.echo(_describe_outputs(explain))


def _labels_in_metadata(props: dict[str, str], classes: int) -> tuple[list[str] | None, str | None]:
    """Class names the plain model carries under a usual metadata key, and that key; a
    warning for each such key passed over (wrong count)."""
    from onnx_explain.labels import labels_from_metadata

    key, names, notes = labels_from_metadata(props, classes)
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    return names, key


# ----------------------------------------------------------------------------- inspect


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--size", help="Input size HxW or N for a model whose height/width is dynamic (as augment --size).")
@_fail_cleanly
def inspect(model: str, as_json: bool, size: str | None) -> None:
    """Show a model's contract, inputs/outputs and candidate target layers."""
    from onnx_explain import contract
    from onnx_explain.augment import inspect_layers
    from onnx_explain.session import load_model

    proto = load_model(model)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = contract.ExplainMetadata.from_props(props)
    info: dict[str, Any] = {
        "file": model,
        "explain_model": meta is not None,
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "inputs": [_value_info(v) for v in proto.graph.input if v.name not in {i.name for i in proto.graph.initializer}],
        "outputs": [_value_info(v) for v in proto.graph.output],
    }
    if meta is not None:
        from onnx_explain.gates import read_gates

        # on-demand outputs: each computed only when its flag (an optional bool input) is fed true
        info["on_demand"] = [{"output": out, "flag": flag} for out, flag in read_gates(proto).items()]
        info["target_layer"] = meta.target_layer
        info["score"] = meta.score
        info["preprocess"] = json.loads(meta.preprocess.to_json()) if meta.preprocess else None
        info["labels"] = len(meta.labels) if meta.labels else 0
        info["cam_head"] = meta.cam
    else:
        with _naming(model):
            clf, layers, chosen = inspect_layers(proto, size=_size_option(size) if size else None)
        info["classes"] = clf.num_classes
        info["ends_in_softmax"] = clf.ends_in_softmax
        info["layout"] = clf.layout
        info["input_size"] = list(clf.spatial_size)
        info["default_layer"] = chosen.value.name if chosen is not None else None
        info["candidate_layers"] = [
            {"name": c.value.name, "op": c.op_type, "channels": c.channels, "height": c.height, "width": c.width,
             "layout": c.layout, "bypassed": not c.dominates}
            for c in layers if c.usable
        ]
        info["not_usable"] = [
            {"name": c.value.name, "op": c.op_type, "channels": c.channels, "height": c.height, "width": c.width,
             "layout": c.layout, "reason": c.reason}
            for c in layers if not c.usable
        ]
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{model}: {'explain model' if meta else 'plain ONNX model'} (opset {info['opset']})")
    for v in info["inputs"]:
        click.echo(f"  input   {v['name']:<24} {v['type']} {v['shape']}")
    for gate in info.get("on_demand", []):
        click.echo(f"  input   {gate['flag']:<24} bool [] optional, default false: feed true to compute "
                   f"{gate['output']!r} (else it has 0 rows)")
    for v in info["outputs"]:
        click.echo(f"  output  {v['name']:<24} {v['type']} {v['shape']}")
    if meta is not None:
        click.echo(f"  target layer: {meta.target_layer}; score: {meta.score}; "
                   f"labels: {info['labels'] or 'none (classes shown by index)'}")
        click.echo(f"  preprocess: {info['preprocess']}")
        click.echo(f"  CAM head: {info['cam_head'] or 'none (use gradcam)'}")
    else:
        h, w = info["input_size"]
        click.echo(f"  classes: {info['classes']}, layout {info['layout']} {h}x{w}, "
                   f"ends in softmax: {info['ends_in_softmax']}")
        click.echo("  candidate target layers (* = default: the last one every path goes through):")
        shown = info["candidate_layers"][-12:]
        default = [c for c in info["candidate_layers"] if c["name"] == info["default_layer"]]
        if default and default[0] not in shown:  # the default is always listed
            shown = default + shown[1:]
        if len(info["candidate_layers"]) > len(shown):
            click.echo(f"  ({len(info['candidate_layers']) - len(shown)} earlier candidates not shown; --json lists all)")
        for c in shown:
            mark = "*" if c["name"] == info["default_layer"] else " "
            note = "  (bypassed by a skip path)" if c["bypassed"] else ""
            if c["height"] <= 2 and c["width"] <= 2:
                note += "  (small map: coarse heatmap)"
            click.echo(f"   {mark} {c['name']:<40} {c['op']:<18} {c['channels']}x{c['height']}x{c['width']}{note}")
        if info["not_usable"]:
            click.echo("  not usable as target layers:")
            for c in info["not_usable"][-6:]:
                click.echo(f"     {c['name']:<40} {c['op']:<18} {c['reason']}")
        if info["default_layer"] is None:
            click.echo("  no default target layer: name one with --layer")
        size_flag = f" --size {size}" if size else ""
        click.echo(f"  run: onnx-explain augment {model} -o explain.onnx{size_flag} [--layer NAME]")


def _value_info(v) -> dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    shape = [d.dim_param or d.dim_value or "?" for d in t.shape.dim]
    return {"name": v.name, "type": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": shape}


# ----------------------------------------------------------------------------- shared


def _expand_inputs(inputs: tuple[str, ...], report_error: Callable[[str], None]) -> list:
    """Expand files, directories and globs into paths (nothing decoded: images are read
    batch by batch later); inputs that name nothing are reported."""
    from onnx_explain.images import iter_image_paths

    paths, problems = iter_image_paths(list(inputs))
    for p in problems:
        report_error(str(p))
    return paths


def _max_pixels_option(fn: Callable) -> Callable:
    from onnx_explain.images import DEFAULT_MAX_PIXELS

    return click.option(
        "--max-pixels", type=click.IntRange(1, MAX_PIXELS_CAP), default=DEFAULT_MAX_PIXELS, show_default=True,
        help="Refuse images with more pixels than this, from their header, before decoding (a 144 MP photo "
             "needs --max-pixels 150000000; each such image takes 3 bytes a pixel and more in memory).",
    )(fn)


def _target_option(value: str) -> int | None:
    """``top1`` (or ``-1``) -> ``None``; a class index >= 0; anything else a usage error
    (``-5`` is not silently top-1).  The upper bound is checked against the model."""
    text = value.strip().lower()
    if text in ("top1", "top-1", "-1"):
        return None
    try:
        index = int(text)
    except ValueError:
        raise Failure(f"--target must be 'top1' or a class index, got {value!r}") from None
    if index < 0 or index >= 2**63:
        shown = text if len(text) <= 24 else text[:21] + "..."
        raise Failure(f"--target must be 'top1' (or -1) or a class index from 0 to the model's classes - 1, "
                      f"got {shown}")
    return index


# ----------------------------------------------------------------------------- score


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@_top_k_option
@_batch_option(16)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@_max_pixels_option
@_fail_cleanly
def score(model: str, images: tuple[str, ...], top_k: int, batch_size: int, device: str, threads: int | None,
          as_json: bool, max_pixels: int) -> None:
    """Classify images: top-k labels and probabilities.

    IMAGES are files, directories or glob patterns (quote globs). Images are read batch
    by batch (memory does not grow with their number); a bad one is reported by name and
    the others are scored (exit 1).
    """
    from onnx_explain.explainer import Explainer, ItemError
    from onnx_explain.outputs import dumps_strict, for_terminal

    errors: list[str] = []

    def report(msg: str) -> None:
        errors.append(msg)
        _echo_err(f"error: {for_terminal(msg)}")

    results = []
    with Explainer(model, device=device, threads=threads, max_pixels=max_pixels) as ex:
        top_k = _check_top_k(top_k, ex.session.num_classes)
        paths = _expand_inputs(images, report)
        with _progress(len(paths), "scoring", not as_json and len(paths) > batch_size) as bar:
            for r in ex.iter_predict(paths, top_k=top_k, batch_size=batch_size, errors="return"):
                bar.update(1)
                if isinstance(r, ItemError):
                    report(r.message)
                    continue
                if as_json:
                    results.append(r)
                else:
                    best = ", ".join(f"{l} ({p:.3f})" for l, p in zip(r.labels, r.probabilities))
                    click.echo(for_terminal(f"{r.path}: {best}"))
    if as_json:
        doc = {"model": model, "results": [
            {"file": r.path, "top_k": [{"class": c, "label": l, "probability": round(p, 6)}
                                       for c, l, p in zip(r.classes, r.labels, r.probabilities)]}
            for r in results], "errors": errors}
        click.echo(dumps_strict(doc, indent=2))
    sys.exit(EXIT_SOME_FAILED if errors else EXIT_OK)


# ----------------------------------------------------------------------------- explain


def _method_names() -> list[str]:
    from onnx_explain.methods import METHODS

    return list(METHODS)


def _output_stem(path: str | None, used: set[str], room: int = 200) -> str:
    """The output files' stem for an input: its own stem, made safe to write and to name
    in report.json (control characters and undecodable bytes -> "_"), cut to ``room``
    bytes so that "<stem>-<n>.<method>.npy" stays a legal file name, made unique."""
    from onnx_explain.outputs import safe_name

    def cut(text: str, size: int) -> str:
        return text.encode("utf-8")[:size].decode("utf-8", "ignore")

    stem = cut(safe_name(Path(path).stem) if path else "image", room) or "image"
    name, k = stem, 1
    while name in used:
        k += 1
        name = cut(stem, room - len(f"-{k}")) + f"-{k}"
    used.add(name)
    return name


def run_explain(model: str, images: tuple[str, ...], methods: list[str], target: int | None, out_dir: Path,
                batch_size: int, device: str, threads: int | None, colormap: str, alpha: float,
                save_npy: bool, top_k: int, as_json: bool, quiet: bool = False,
                max_pixels: int | None = None) -> int:
    """Explain images with each method; write overlays, maps and report.json. Returns the exit status.

    Images are decoded batch by batch (at most ``batch_size`` of them, and a bounded
    number of pixels, in memory at once), each batch explained by every method and its
    files written before the next is read.  Whatever fails for one image (unreadable,
    a method's error, memory, writing its files) is reported by name and the others are
    done; a failed batch is retried image by image.  The output folder is held for the
    run (a second run into it is refused) and report.json lists exactly the files written.
    """
    import errno

    from onnx_explain.errors import ModelError
    from onnx_explain.explainer import Explainer, ItemError
    from onnx_explain.images import DEFAULT_MAX_PIXELS, display_path
    from onnx_explain.outputs import (NAME_MAX, FolderBusy, clean_stale_temporaries, dumps_strict, for_terminal,
                                      lock_folder, write_json, write_npy, write_png)
    from onnx_explain.overlay import caption, draw_box, is_flat, overlay

    errors: list[dict[str, str]] = []

    def report(msg: str, file: str | None = None) -> None:
        errors.append({"file": file, "error": msg} if file is not None else {"error": msg})
        _echo_err(f"error: {for_terminal(msg)}")

    fatal_errno = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
    room = NAME_MAX - max(len(f".{m}.png".encode()) for m in methods)  # .npy: as long
    t_start = time.perf_counter()
    with Explainer(model, device=device, threads=threads, max_pixels=max_pixels or DEFAULT_MAX_PIXELS) as ex, \
            contextlib.ExitStack() as held:
        n_classes = ex.session.num_classes
        if target is not None and n_classes is not None and target >= n_classes:
            # before any image work, and before --out is created: a failed run leaves nothing
            raise Failure(f"target class {target} out of range: the model has {n_classes} classes "
                          f"(0..{n_classes - 1})")
        top_k = _check_top_k(top_k, n_classes)
        for m in methods:  # fail early, before any image work, on a method the model can't do
            ex.method(m)
        paths = _expand_inputs(images, report)
        records: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        used: set[str] = set()
        n_read = 0
        locked = False
        total = len(paths) * len(methods)
        show = not (as_json or quiet) and (sys.stderr.isatty() or total > batch_size)
        with _progress(total, "explaining", show) as bar:
            for chunk in ex.iter_batches(paths, batch_size):
                loaded = []
                for item in chunk:
                    if isinstance(item, ItemError):
                        report(item.message, item.path)
                        bar.update(len(methods))
                    else:
                        loaded.append(item)
                if not loaded:
                    continue
                if not locked:  # the first readable image: now the folder is ours
                    try:
                        held.enter_context(lock_folder(out_dir))
                    except FolderBusy as exc:
                        raise Failure(str(exc)) from None
                    clean_stale_temporaries(out_dir)
                    locked = True
                n_read += len(loaded)
                stems = {id(im): _output_stem(str(im.path) if im.path else None, used, room) for im in loaded}
                for method in methods:
                    for im, e in zip(loaded, ex.iter_explain(loaded, method=method, target=target,
                                                               batch_size=batch_size, top_k=top_k, errors="return")):
                        bar.update(1)
                        if isinstance(e, ItemError):
                            report(e.message, e.path)
                            continue
                        try:
                            records[method].append(_write_explanation(
                                im, e, method, stems[id(im)], out_dir, colormap, alpha, save_npy,
                                write_png, write_npy, overlay, draw_box, caption, is_flat, for_terminal))
                        except ModelError:
                            raise
                        except OSError as exc:
                            if exc.errno in fatal_errno:  # the disk, not this image: nothing more can be written
                                raise
                            report(f"{display_path(im.path) if im.path else stems[id(im)]}: {method}: writing its "
                                   f"files failed: {exc.strerror or exc}", e.path)
                        except Exception as exc:  # noqa: BLE001 - this image's own failure, memory included
                            reason = "not enough memory" if isinstance(exc, MemoryError) else \
                                f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                            report(f"{display_path(im.path) if im.path else stems[id(im)]}: {method}: "
                                   f"{reason}", e.path)
                del loaded, chunk
        if not n_read:
            raise Failure("no image could be read" + (f" ({len(errors)} failed)" if errors else ""))
        results = [r for m in methods for r in records[m]]
        doc = {
            "model": model,
            "methods": methods,
            "target": "top1" if target is None else target,
            "providers": ex.session.active_providers,
            "images": n_read,
            "failed": len(errors),
            "flat_maps": sum(1 for r in results if r["flat_map"]),
            "seconds": round(time.perf_counter() - t_start, 3),
            "results": results,
            "errors": errors,
        }
        write_json(out_dir / "report.json", doc)
    if as_json:
        click.echo(dumps_strict(doc, indent=2))
    elif not quiet:
        for r in results:
            flat = "  (flat map)" if r["flat_map"] else ""
            click.echo(for_terminal(f"{r['file']}: {r['method']} -> {r['label']} (p={r['probability']:.3f}) "
                                    f"box={r['box']}{flat}"))
        click.echo(for_terminal(f"wrote {len(results)} explanation(s) and {out_dir / 'report.json'}")
                   + (f"; {len(errors)} input(s) failed" if errors else ""))
    return EXIT_SOME_FAILED if errors else EXIT_OK


def _write_explanation(im, e, method, stem, out_dir, colormap, alpha, save_npy, write_png, write_npy, overlay,
                       draw_box, caption, is_flat, for_terminal) -> dict[str, Any]:
    """One image's overlay (and heatmap) files; its report.json record."""
    flat = is_flat(e.raw_map) or is_flat(e.heatmap)
    if flat:
        _echo_err(for_terminal(f"warning: {e.path or stem}: {method} gave a flat map (one value everywhere) "
                               f"for class {e.target_class} ({caption(e.label)}): the overlay shows no heat"))
    picture = overlay(im.rgb, e.heatmap, colormap=colormap, alpha=alpha)
    if e.box is not None:
        picture = draw_box(picture, e.box, (255, 255, 255), label=caption(e.label, e.probability))
    files = {"overlay": str(write_png(out_dir / f"{stem}.{method}.png", picture))}
    del picture
    if save_npy:
        files["heatmap"] = str(write_npy(out_dir / f"{stem}.{method}.npy", e.heatmap))
    rec = e.to_json()
    rec["flat_map"] = flat
    rec["outputs"] = files
    return rec


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("-m", "--method", default="gradcam", show_default=True,
              help="Method, or several separated by commas: " + ", ".join(_method_names()) + ".")
@click.option("--target", default="top1", show_default=True, help="Class to explain: top1 or a class index.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="explanations", show_default=True)
@_batch_option(8, "Images (or passes) per ONNX Runtime call.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@_threads_option
@click.option("--colormap", default="jet", show_default=True, help="OpenCV colour map (jet, turbo, inferno, viridis, ...).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heatmap opacity.")
@click.option("--npy/--no-npy", default=True, show_default=True, help="Also save each heatmap as .npy.")
@_top_k_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_max_pixels_option
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray (pip install onnx-explain[ray]): Parquet parts and overlays in --out; "
                   "a re-run skips what is written. IMAGES may also be URIs (s3://...).")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="Join this Ray cluster [a local one on 127.0.0.1].")
@click.option("--actors", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="With --ray: explain sessions (Ray actors) working at once.")
@_fail_cleanly
def explain(model: str, images: tuple[str, ...], method: str, target: str, out_dir: str, batch_size: int,
            device: str, threads: int | None, colormap: str, alpha: float, npy: bool, top_k: int,
            as_json: bool, max_pixels: int, use_ray: bool = False, ray_address: str | None = None,
            actors: int = 1) -> None:
    """Explain images: overlay PNGs, heatmaps (.npy) and report.json in --out.

    \b
    IMAGES are files, directories or glob patterns (quote globs).
    One bad image is reported by name and the others are still explained (exit 1).
    Images are read batch by batch: memory does not grow with their number. A second
    run into the same --out while one is running is refused.
    """
    methods = [m.strip() for m in method.split(",") if m.strip()]
    known = _method_names()
    for m in methods:
        if m not in known:
            raise Failure(f"unknown method {m!r}; choose from {', '.join(known)}")
    from onnx_explain.overlay import COLORMAPS

    if colormap.lower() not in COLORMAPS:
        raise Failure(f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}")
    if use_ray or ray_address:
        sys.exit(_run_explain_ray(model, images, methods, _target_option(target), out_dir, batch_size, threads,
                                  colormap, alpha, top_k, as_json, max_pixels, ray_address, actors))
    status = run_explain(model, images, methods, _target_option(target), Path(out_dir), batch_size, device, threads,
                         colormap, alpha, npy, top_k, as_json, max_pixels=max_pixels)
    sys.exit(status)


def _require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise Failure("--ray needs Ray: pip install 'onnx-explain[ray]'")


def _run_explain_ray(model, images, methods, target, out_dir, batch_size, threads, colormap, alpha, top_k,
                     as_json, max_pixels, ray_address, actors) -> int:
    if len(methods) != 1:
        raise Failure("--ray explains one method per run (its Parquet parts are keyed by file)")
    _require_ray()
    from onnx_explain import ray_batch
    from onnx_explain.explainer import Explainer

    with Explainer(model, device="cpu", threads=1) as ex:  # a bad model or method fails here, before Ray
        ex.method(methods[0])
        n_classes = ex.session.num_classes
        if target is not None and n_classes is not None and target >= n_classes:
            raise Failure(f"target class {target} out of range: the model has {n_classes} classes")
        top_k = _check_top_k(top_k, n_classes)
    options = ray_batch.ExplainOptions(method=methods[0], target=target, top_k=top_k, batch_size=batch_size,
                                       threads=threads or 1, max_pixels=max_pixels, colormap=colormap, alpha=alpha)
    return ray_batch.run_cli(model, images, out_dir, address=ray_address, actors=actors, options=options,
                             as_json=as_json)


# ----------------------------------------------------------------------------- demo


def demo_photos() -> list[str]:
    """The real photos that ship with scikit-image."""
    try:
        import skimage
    except ImportError:
        raise Failure("the demo photos come from scikit-image: pip install scikit-image") from None
    folder = Path(skimage.__file__).parent / "data"
    return [str(folder / name) for name in DEMO_PHOTOS if (folder / name).exists()]


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-output", show_default=True)
@click.option("-m", "--method", default="gradcam,gradcam++,layercam,guided_gradcam", show_default=True,
              help="Methods to run (scorecam is slow on the CPU: 1280 passes per image).")
@_fail_cleanly
def demo(out_dir: str, method: str) -> None:
    """Export the pretrained EfficientNet-Lite0 (once) and explain scikit-image's photos."""
    out = Path(out_dir)
    model = out / "efficientnet_lite0.explain.onnx"
    if not model.exists():
        from onnx_explain.export import export_model

        out.mkdir(parents=True, exist_ok=True)
        click.echo(f"exporting the pretrained EfficientNet-Lite0 to {model} ...")
        export_model(DEFAULT_MODEL, str(model))
    methods = [m.strip() for m in method.split(",") if m.strip()]
    status = run_explain(str(model), tuple(demo_photos()), methods, None, out, 8, "auto", None, "jet", 0.5,
                         True, 5, False)
    sys.exit(status)


# ----------------------------------------------------------------------------- evaluate


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder of images (not recursive).")
@click.option("--boxes", type=click.Path(exists=True), required=True,
              help="Ground truth: a folder of Pascal VOC .xml, one .xml, or a CSV file,xmin,ymin,xmax,ymax[,class] "
                   "(0-based, xmax/ymax exclusive).")
@click.option("-m", "--method", default="cam,gradcam", show_default=True,
              help="Comma-separated methods, compared side by side (see `explain --help`).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="evaluation", show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.15, show_default=True,
              help="Box from heatmap: keep pixels >= this fraction of the maximum, largest region.")
@click.option("--steps", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Deletion/insertion steps (each costs 2 forward passes per image and method).")
@click.option("--target", default="top1", show_default=True,
              help="Class to explain: top1, a class index, or 'annotated' (box labels as class indices "
                   "or model labels).")
@_batch_option(16)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@_threads_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of the table.")
@_fail_cleanly
def evaluate(model: str, images_dir: str, boxes: str, method: str, out_dir: str, threshold: float, steps: int,
             target: str, batch_size: int, device: str, threads: int | None, as_json: bool) -> None:
    """Score explanations: localization (IoU, pointing game) and faithfulness (deletion/insertion).

    \b
    Writes summary.json, per_image.csv, table.txt, curves.png and boxes.png to --out and
    prints the methods side by side. An image that cannot be read is reported by name
    and the others are evaluated (exit 1). Build a test set with `make-evalset`.
    """
    from onnx_explain.evaluation.command import run_evaluation

    methods = [m.strip() for m in method.split(",") if m.strip()]
    status = run_evaluation(model, images_dir, boxes, methods, Path(out_dir), threshold=threshold, steps=steps,
                            target=target, batch_size=batch_size, device=device, threads=threads, as_json=as_json)
    sys.exit(status)


@main.command("make-evalset")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("-n", "--images", "n_images", type=click.IntRange(1, 10000), default=24, show_default=True,
              help="Images to make.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", type=click.Choice(["a", "b"]), default="a", show_default=True,
              help="a: the project's set; b: other objects and backgrounds (a held-out set).")
@_fail_cleanly
def make_evalset(out_dir: str, n_images: int, seed: int, split: str) -> None:
    """Build a small annotated evaluation set from scikit-image's photos (no download).

    Writes OUT_DIR/images/*.jpg, OUT_DIR/annotations/*.xml (Pascal VOC), boxes.csv and
    dataset.json; the same seed gives the same files.
    """
    from onnx_explain.evaluation.dataset import build_split

    written = build_split(out_dir, n_images=n_images, seed=seed, split=split)
    click.echo(f"wrote {written} images with Pascal VOC boxes to {out_dir}")
    click.echo(f"evaluate with: onnx-explain evaluate MODEL.onnx --images {Path(out_dir) / 'images'} "
               f"--boxes {Path(out_dir) / 'annotations'}")



@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port.")
@click.option("--name", help="Model name in the URLs [the file name without .onnx/.explain].")
@click.option("--max-batch-size", type=click.IntRange(1, MAX_BATCH), default=None,
              help="Images gathered from concurrent requests into one ONNX Runtime call [8].")
@click.option("--max-delay-ms", type=click.FloatRange(0, 10000), default=None,
              help="How long a batch waits for more requests [2].")
@click.option("--max-queue", type=click.IntRange(1, 1_000_000), default=None,
              help="Images waiting at most; beyond, requests get 503 + Retry-After [64].")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Batches computed at once, each in its own thread [2].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(1, MAX_THREADS),
              help="ONNX Runtime threads per model call [the cores shared out among the workers].")
@click.option("--token", envvar="ONNX_EXPLAIN_TOKEN", show_envvar=True,
              help="Bearer token required on every route but the health probes.")
@click.option("--max-body-mb", type=click.FloatRange(0.01, 4096), default=None,
              help="Largest request body in MiB; larger ones get 413 [32].")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 86400), default=None,
              help="Seconds a request may take before it gets 504 [60].")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run on Ray Serve (pip install onnx-explain[ray]): the same routes, --replicas copies.")
@click.option("--ray-address", default=None, metavar="auto|HOST:PORT",
              help="With --ray: join this Ray cluster [a local one on 127.0.0.1].")
@click.option("--replicas", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="With --ray: replicas of the service (each batches its own requests).")
@_fail_cleanly
def serve(model: str, host: str, port: int, name: str | None, max_batch_size: int | None,
          max_delay_ms: float | None, max_queue: int | None, workers: int | None, device: str,
          threads: int | None, token: str | None, max_body_mb: float | None, timeout_s: float | None,
          use_ray: bool = False, ray_address: str | None = None, replicas: int = 1) -> None:
    """Serve an explain model over HTTP: Open Inference Protocol v2, KServe v1, POST /explain.

    \b
    Routes: /v2/health/live, /v2/health/ready, /v2/models/NAME[/ready], /v2/models/NAME/infer,
    /v1/models/NAME:predict, /v1/models/NAME:explain, POST /explain (multipart), /metrics,
    /docs.  Stops gracefully on SIGTERM (in-flight requests finish, exit 0).
    """
    try:
        from onnx_explain.serve import config as serve_config
        from onnx_explain.serve.server import run
    except ImportError as err:
        raise Failure(f"serving needs the [serve] extra (pip install 'onnx-explain[serve]'): {err}") from None
    if not os.path.isfile(model):
        raise Failure(f"{model}: no such model file")
    defaults = {
        "max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms, "max_queue": max_queue, "workers": workers,
        "timeout_s": timeout_s, "max_body_bytes": None if max_body_mb is None else int(max_body_mb * (1 << 20)),
    }
    try:
        cfg = serve_config.ServeConfig(model=Path(model), name=name, host=host, port=port, device=device,
                                       threads=threads, token=token or None,
                                       **{k: v for k, v in defaults.items() if v is not None})
    except ValueError as err:
        raise Failure(str(err)) from None
    if use_ray or ray_address:
        _require_ray()
        import dataclasses

        from onnx_explain import ray_serve

        if cfg.port == 0:  # Serve's proxy needs a port of its own choosing
            import socket

            with socket.socket() as s_:
                s_.bind((cfg.host, 0))
                cfg = dataclasses.replace(cfg, port=s_.getsockname()[1])
        ray_serve.run_cli(cfg, replicas=replicas, address=ray_address)
        sys.exit(0)
    sys.exit(run(cfg))

if __name__ == "__main__":
    main()
