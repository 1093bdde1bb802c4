"""ONNX files as other producers write them, generated at test time from torch modules.

Each builder returns a plain ONNX classifier the way a user would have it: TorchScript
(``dynamo=False``) and dynamo exports, dynamic height/width, old opsets with a final
Softmax, weights held in ``Constant`` nodes with computed Reshape shapes (paddle2onnx's
habits), onnxslim's output, and a hand-built channels-last graph in tf2onnx's style.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn


def torchscript(module: nn.Module, size: int, *, opset: int = 17, dynamic_hw: bool = False) -> onnx.ModelProto:
    """The legacy exporter, as most ONNX files in the wild were made (dynamic batch)."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    f = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.randn(2, 3, size, size),), f, input_names=["input"],
                      output_names=["output"], opset_version=opset, dynamo=False,
                      dynamic_axes={"input": axes, "output": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def dynamo(module: nn.Module, size: int, *, opset: int = 18) -> onnx.ModelProto:
    program = torch.onnx.export(module.eval(), (torch.randn(2, 3, size, size),), dynamo=True,
                                input_names=["input"], output_names=["output"], opset_version=opset,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), verbose=False)
    return program.model_proto


class WithSoftmax(nn.Module):
    """A classifier that ends in Softmax, as deployed files often do."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return torch.softmax(self.module(x), dim=1)


class PaddleStyle(nn.Module):
    """Conv stack flattened with ``x.reshape(x.shape[0], -1)``: a Reshape whose target shape
    is computed from ``Shape(x)`` at run time, as paddle2onnx and TorchScript write it."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
            nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 24, 1), nn.ReLU6(),
        )
        for m in self.features:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        self.fc = nn.Linear(24, classes)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.reshape(x.shape[0], -1))


def weights_in_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer moved into a ``Constant`` node (paddle2onnx keeps weights that way)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = [helper.make_node("Constant", [], [t.name], value=t, name=f"const/{t.name}")
                 for t in model.graph.initializer]
    names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in names]
    nodes = constants + list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def slimmed(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's simplification of ``model`` (as users run it before deploying)."""
    import onnxslim

    return onnxslim.slim(onnx.ModelProto.FromString(model.SerializeToString()))


class KerasStyle:
    """A channels-last classifier written the way tf2onnx writes Keras models.

    Input N x H x W x 3, a Transpose to channels-first for the convolutions, back to
    channels-last between them, then ``pooling`` to N x 1 x 1 x C: ``"gap"`` (Transpose,
    GlobalAveragePool, Transpose) or ``"reduce_mean"`` (ReduceMean over axes 1, 2), then
    Reshape -> MatMul -> Add -> Softmax. :meth:`reference` is the same function in torch.
    """

    def __init__(self, size: int = 20, classes: int = 5, pooling: str = "gap", opset: int = 13, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.size, self.classes, self.pooling, self.opset = size, classes, pooling, opset
        self.w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32)
        self.b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
        self.w2 = (rng.standard_normal((12, 8, 3, 3)) * 0.2).astype(np.float32)
        self.b2 = (rng.standard_normal(12) * 0.1).astype(np.float32)
        self.fc = (rng.standard_normal((12, classes)) * 0.5).astype(np.float32)
        self.fcb = (rng.standard_normal(classes) * 0.1).astype(np.float32)

    # The values holding the last conv block's output: channels-last, and its channels-first
    # transpose that the pooling reads (the same map; either is the right target layer).
    layers = ("block2_out", "t2", "r2")

    def onnx(self) -> onnx.ModelProto:
        s = self.size
        n = helper.make_node
        nodes = [
            n("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
            n("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
            n("Relu", ["c1"], ["r1"]),
            n("Transpose", ["r1"], ["block1_out"], perm=[0, 2, 3, 1]),
            n("Transpose", ["block1_out"], ["t1"], perm=[0, 3, 1, 2]),
            n("Conv", ["t1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            n("Relu", ["c2"], ["r2"]),
            n("Transpose", ["r2"], ["block2_out"], perm=[0, 2, 3, 1]),
        ]
        if self.pooling == "gap":
            nodes += [n("Transpose", ["block2_out"], ["t2"], perm=[0, 3, 1, 2]),
                      n("GlobalAveragePool", ["t2"], ["gap"]),
                      n("Transpose", ["gap"], ["pooled"], perm=[0, 2, 3, 1])]
        else:
            nodes += [n("ReduceMean", ["block2_out"], ["pooled"], axes=[1, 2], keepdims=1)]
        nodes += [
            n("Reshape", ["pooled", "flat_shape"], ["flat"]),
            n("MatMul", ["flat", "fc"], ["mm"]),
            n("Add", ["mm", "fcb"], ["logits"]),
            n("Softmax", ["logits"], ["probabilities"], axis=1 if self.opset >= 13 else 1),
        ]
        inits = [numpy_helper.from_array(v, k) for k, v in dict(
            w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2, fc=self.fc, fcb=self.fcb,
            flat_shape=np.array([-1, 12], np.int64)).items()]
        graph = helper.make_graph(
            nodes, "keras_style",
            [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", s, s, 3])],
            [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", self.classes])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="tf2onnx")
        onnx.checker.check_model(model)
        return model

    def reference(self, x: np.ndarray, target: np.ndarray):
        """(classes, block2_out and d logit / d block2_out as N x C x h x w, d logit / d image),
        float64 autograd."""
        f64 = {k: torch.from_numpy(getattr(self, k).astype(np.float64)) for k in ("w1", "b1", "w2", "b2", "fc", "fcb")}
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        h = torch.relu(nn.functional.conv2d(xt.permute(0, 3, 1, 2), f64["w1"], f64["b1"], stride=2, padding=1))
        a = torch.relu(nn.functional.conv2d(h, f64["w2"], f64["b2"], padding=1))
        a.retain_grad()
        logits = a.mean((2, 3)) @ f64["fc"] + f64["fcb"]
        t = torch.as_tensor(target)
        chosen = torch.where(t < 0, logits.argmax(1), t)
        logits.gather(1, chosen[:, None]).sum().backward()
        return chosen.numpy(), a.detach().numpy(), a.grad.numpy(), xt.grad.numpy()


# ---------------------------------------------------------------------------------------
# timm's export idioms (TorchScript, dynamic batch): what real zoo models compute at run time
# ---------------------------------------------------------------------------------------


def _same_padding(size, kernel: int, stride: int):
    """timm's ``get_same_padding`` as traced: float arithmetic on a size read from the shape."""
    if isinstance(size, torch.Tensor):
        return torch.clamp(((size / stride).ceil() - 1) * stride + kernel - size, min=0)
    return max((-(-size // stride) - 1) * stride + kernel - size, 0)


class SamePadding(nn.Module):
    """TF-style "same" padding computed from ``x.size()`` (timm's ``tf_*`` models)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 12, 3, stride=2)
        self.act1, self.act2 = nn.ReLU6(), nn.ReLU6()
        self.fc = nn.Linear(12, 6)

    def _pad(self, x):
        ih, iw = x.size()[-2:]
        ph, pw = _same_padding(ih, 3, 2), _same_padding(iw, 3, 2)
        return nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))

    def forward(self, x):
        x = self.act1(self.conv1(self._pad(x)))
        x = self.act2(self.conv2(self._pad(x)))
        return self.fc(x.mean((2, 3)))


class SplitSum(nn.Module):
    """Split attention's ``x.reshape(B, radix, C // radix, H, W).sum(1)`` (ResNeSt)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 16, 3, padding=1), nn.AvgPool2d(2)
        self.head, self.act = nn.Conv2d(8, 12, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(12, 6)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        b, rc, h, w = x.shape
        x = self.pool(x.reshape((b, 2, rc // 2, h, w)).sum(1))
        return self.fc(self.act(self.head(x)).mean((2, 3)))


class EfficientChannelAttention(nn.Module):
    """ECA's ``view(B, 1, -1)`` -> Conv1d -> ``view(B, -1, 1, 1)`` gate (ECA-ResNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.eca = nn.Conv2d(3, 16, 3, padding=1), nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head, self.act = nn.Conv2d(16, 12, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(12, 6)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        y = self.eca(x.mean((2, 3)).view(x.shape[0], 1, -1)).view(x.shape[0], -1, 1, 1).sigmoid()
        return self.fc(self.act(self.head(x * y)).mean((2, 3)))


class ClassToken(nn.Module):
    """A patch embedding, then a class token ``expand(B, -1, -1)``-ed and concatenated (ViT)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.fc = nn.Linear(16, 6)

    def forward(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        return self.fc(torch.relu(tokens).mean(1))


class SelectiveKernel(nn.Module):
    """Two dilated paths stacked, attention over them from their pooled sum, a residual
    (SK-ResNet): with its view target folded, ONNX Runtime fuses the residual differently."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.paths = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, 1, d, dilation=d), nn.BatchNorm2d(c), nn.ReLU())
                                   for d in (1, 2))
        self.reduce, self.select = nn.Sequential(nn.Conv2d(c, 8, 1), nn.ReLU()), nn.Conv2d(8, 2 * c, 1)
        self.conv2, self.act = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c)), nn.ReLU()
        self.fc = nn.Linear(c, 6)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # statistics of a trained network, not the identity
            for bn in self.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.running_mean.normal_(0, 0.1, generator=generator)
                    bn.running_var.uniform_(0.5, 1.5, generator=generator)
                    bn.weight.uniform_(0.5, 1.5, generator=generator)
                    bn.bias.normal_(0, 0.1, generator=generator)

    def forward(self, x):
        x = self.stem(x)
        paths = torch.stack([p(x) for p in self.paths], 1)  # B x 2 x C x H x W
        b, p, c, _, _ = paths.shape
        attention = self.select(self.reduce(paths.sum(1).mean((2, 3), keepdim=True))).view(b, p, c, 1, 1).softmax(1)
        return self.fc(self.act(self.conv2((paths * attention).sum(1)) + x).mean((2, 3)))


TIMM_IDIOMS = {"same_padding": SamePadding, "split_sum": SplitSum, "eca": EfficientChannelAttention,
               "class_token": ClassToken, "selective_kernel": SelectiveKernel}
