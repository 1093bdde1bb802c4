"""Rewrite any ONNX image classifier into an explain model (see the contract in DESIGN.md).

``augment_model`` runs a short pipeline of onnx-ir passes over the model:

1. :class:`AddTargetAndScorePass` - ``target`` input, ``target_class`` and ``score``;
2. :class:`AddGradientsPass` - ``activations``, ``grad_activations`` and optionally the
   plain and guided input gradients, from our reverse-mode pass;
3. :class:`AddGradCamPass` - optionally the finished Grad-CAM map;
4. unused nodes are removed, the metadata written.
"""

from __future__ import annotations

import dataclasses
import warnings

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from onnx_explain import contract
from onnx_explain.augment.add_gradcam import AddGradCamPass
from onnx_explain.augment.add_gradients import AddGradientsPass
from onnx_explain.augment.add_target_score import AddTargetAndScorePass
from onnx_explain.augment.cam_head import find_cam_head
from onnx_explain.augment.graph_facts import Classifier, find_classifier
from onnx_explain.augment.plan import ExplainPlan
from onnx_explain.augment.target_layer import (
    Candidate,
    SmallTargetLayerWarning,
    choose_target_layer,
    layer_report,
)
from onnx_explain.errors import ExplainError, ModelError
from onnx_explain.ir_utils import load_for_rewriting

__all__ = ["augment_model", "augment_file", "inspect_layers", "Candidate", "Classifier", "SmallTargetLayerWarning"]

def augment_model(
    model: onnx.ModelProto,
    *,
    layer: str | None = None,
    input_gradients: bool = False,
    guided: bool = False,
    gradcam: bool = False,
    preprocess: contract.Preprocess | None = None,
    labels: list[str] | None = None,
) -> onnx.ModelProto:
    """Return the explain model for ``model``.

    ``layer`` names the ONNX value to explain (default: found automatically).  Preprocessing
    and labels default to what the plain model's metadata says (as our exporter writes it),
    else to the input's size with ImageNet mean/std.
    """
    if any(o.name in (contract.TARGET_CLASS, contract.SCORE, contract.ACTIVATIONS) for o in model.graph.output):
        raise ModelError("this model is already an explain model")
    old = {p.key: p.value for p in model.metadata_props}
    plain = contract.read_plain_metadata(old)
    size_source = preprocess or plain.get("preprocess")
    irm = load_for_rewriting(model, size=None if size_source is None else tuple(size_source.size))
    graph = irm.graph
    clf = find_classifier(graph)
    cand = choose_target_layer(graph, clf, layer)
    plan = ExplainPlan(clf, cand, input_gradients=input_gradients, guided=guided, gradcam=gradcam)
    cam = find_cam_head(cand.value, clf.logits)

    passes = [AddTargetAndScorePass(plan), AddGradientsPass(plan)]
    if gradcam:
        passes.append(AddGradCamPass(plan))
    passes.append(RemoveUnusedNodesPass())
    try:
        ir.passes.Sequential(*passes)(irm)
    except ir.passes.PassError as exc:  # report our own errors as themselves, not wrapped
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ExplainError):
            raise cause from None
        raise
    graph.sort()

    pre = preprocess or plain.get("preprocess") or _default_preprocess(clf)
    meta = contract.ExplainMetadata(
        target_layer=cand.value.name,
        score="logit",
        outputs={"logits" if not clf.ends_in_softmax else "probabilities": clf.output.name, **plan.outputs},
        preprocess=pre,
        labels=labels if labels is not None else plain.get("labels"),
        cam=None if cam is None else dataclasses.asdict(cam),
    )
    props = {k: v for k, v in old.items() if not k.startswith(contract.METADATA_PREFIX)}
    props.update(meta.to_props())
    irm.metadata_props.clear()
    irm.metadata_props.update(props)
    out = ir.to_proto(irm)
    onnx.checker.check_model(out)
    return out


def _default_preprocess(clf: Classifier) -> contract.Preprocess:
    h, w = clf.spatial_size
    return contract.Preprocess(size=(h, w), layout=clf.layout)


def inspect_layers(model: onnx.ModelProto, size: tuple[int, int] | None = None
                   ) -> tuple[Classifier, list[Candidate], Candidate | None]:
    """The classifier facts, every 4-D activation between the image and the logits (each
    with the reason it is not usable, if it is not), and the one chosen by default (``None``
    when none is usable). ``size`` fixes a dynamic image size, as for :func:`augment_model`."""
    if size is None:
        meta = contract.read_plain_metadata({p.key: p.value for p in model.metadata_props}).get("preprocess")
        size = None if meta is None else tuple(meta.size)
    irm = load_for_rewriting(model, size=size)
    clf = find_classifier(irm.graph)
    report = layer_report(irm.graph, clf)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallTargetLayerWarning)
            chosen = choose_target_layer(irm.graph, clf)
    except ModelError:
        chosen = None
    return clf, report, chosen


def augment_file(src: str, dst: str, **kwargs) -> onnx.ModelProto:
    """Load ``src``, augment, save to ``dst`` whole or not at all."""
    import os

    from onnx_explain.outputs import write_bytes
    from onnx_explain.session import load_model

    out = augment_model(load_model(src), **kwargs)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    write_bytes(dst, out.SerializeToString())
    return out
