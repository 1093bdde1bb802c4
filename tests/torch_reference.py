"""Torch-side references for the tests: export helpers and autograd gradients."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn


def export(model: nn.Module, x: torch.Tensor, *, dynamo: bool = True, dynamic_batch: bool = True,
           opset: int = 18, keep_batchnorm: bool = False) -> onnx.ModelProto:
    """Export ``model`` the way a user would (dynamic batch unless told otherwise)."""
    f = io.BytesIO()
    model.eval()
    if dynamo and not keep_batchnorm:
        shapes = {"x": {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic_batch else None
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=shapes, opset_version=opset, verbose=False)
        return program.model_proto
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=opset, dynamo=False)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if keep_batchnorm:
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    torch.onnx.export(model, (x,), f, **kwargs)
    return onnx.load_from_string(f.getvalue())


def autograd(model: nn.Module, layer: nn.Module, x, target: np.ndarray, guided: bool = False):
    """(logits, activations, d logit[target] / d activations, d logit[target] / d x, classes).

    ``guided``: ReLU backward hooks pass only positive gradients (guided backprop), the
    reference Captum's GuidedBackprop uses.  Runs in ``x``'s dtype (the model must match).
    """
    x = torch.as_tensor(x).clone().detach().requires_grad_(True)
    store = {}
    hooks = [layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))]
    inplace = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    if guided:
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False  # backward hooks cannot wrap in-place ReLUs
                hooks.append(m.register_full_backward_hook(lambda m, gi, go: (torch.clamp(gi[0], min=0.0),)))
    try:
        logits = model(x)
        a = store["a"]
        a.retain_grad()
        t = torch.as_tensor(target)
        chosen = torch.where(t < 0, logits.argmax(1), t)
        logits.gather(1, chosen[:, None]).sum().backward()
    finally:
        for h in hooks:
            h.remove()
        for m in inplace:
            m.inplace = True
    return logits.detach().numpy(), a.detach().numpy(), a.grad.numpy(), x.grad.numpy(), chosen.numpy()


def explain_session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_explain(model: onnx.ModelProto | ort.InferenceSession, x: np.ndarray, target: np.ndarray,
                outputs=None) -> dict[str, np.ndarray]:
    """Run an explain model (or a session of one) on ``x`` with ``target``: name -> array."""
    s = model if isinstance(model, ort.InferenceSession) else explain_session(model)
    names = outputs or [o.name for o in s.get_outputs()]
    image = next(i.name for i in s.get_inputs() if i.name != "target")
    return dict(zip(names, s.run(names, {image: x.astype(np.float32), "target": target.astype(np.int64)})))


def assert_close(got: np.ndarray, ref: np.ndarray, what: str, rel_l2: float = 1e-5, rel_max: float = 1e-4) -> None:
    """The issue's agreement criterion: relative L2 <= 1e-5 and max abs <= 1e-4 * max|ref|."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    scale = np.abs(ref).max()
    assert scale > 0, f"{what}: reference is all zero"
    l2 = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    mx = np.abs(got - ref).max() / scale
    assert l2 <= rel_l2 and mx <= rel_max, f"{what}: relative L2 {l2:.2e}, max {mx:.2e}"
