"""Rewrite any ONNX image classifier into an explain model (see the contract in DESIGN.md).

``augment_model`` runs a short pipeline of onnx-ir passes over the model:

1. :class:`AddTargetAndScorePass` - ``target`` input, ``target_class`` and ``score``;
2. :class:`AddGradientsPass` - ``activations``, ``grad_activations`` and optionally the
   plain and guided input gradients, from our reverse-mode pass;
3. :class:`AddMapsPass` - optionally finished maps (Grad-CAM, Grad-CAM++, LayerCAM);
4. :class:`AddPredictionPass` - optionally ``probabilities`` and the ``top_k`` classes;
5. :class:`AddPixelsInputPass` - optionally preprocessing in the graph (``pixels`` input);
6. outputs not asked for and unused nodes are removed, the metadata written; on demand,
   the input gradients are put behind flag inputs (:mod:`onnx_explain.gates`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from onnx_explain import contract
from onnx_explain.augment.original_forward import with_original_forward
from onnx_explain.augment.add_gradcam import AddGradCamPass, AddMapsPass
from onnx_explain.augment.add_pixels import AddPixelsInputPass
from onnx_explain.augment.add_prediction import AddPredictionPass
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

__all__ = ["augment_model", "augment_file", "inspect_layers", "output_choices", "Candidate", "Classifier",
           "SmallTargetLayerWarning", "AddGradCamPass"]

def augment_model(
    model: onnx.ModelProto,
    *,
    layer: str | None = None,
    input_gradients: bool = False,
    guided: bool = False,
    gradcam: bool = False,
    preprocess: contract.Preprocess | None = None,
    labels: list[str] | None = None,
    outputs: Sequence[str] | None = None,
    on_demand: bool = False,
    pixels: bool = False,
    top_k: int = 5,
) -> onnx.ModelProto:
    """Return the explain model for ``model``.

    ``layer`` names the ONNX value to explain (default: found automatically).  Preprocessing
    and labels default to what the plain model's metadata says (as our exporter writes it),
    else to the input's size with ImageNet mean/std.

    Which outputs the file has (besides the model's own, always first):

    * ``outputs=None``: ``target_class``, ``score``, ``activations``, ``grad_activations``,
      plus ``grad_input`` / ``guided_grad_input`` / ``gradcam`` as ``input_gradients`` /
      ``guided`` / ``gradcam`` say;
    * ``outputs=[...]``: exactly those, from :data:`contract.ALL_OUTPUTS` (``"top_k"``
      stands for ``top_k_values`` and ``top_k_indices``, the ``top_k`` best classes), e.g.
      ``["gradcam"]`` for a lean file that costs a prediction.

    ``on_demand``: ``grad_input`` / ``guided_grad_input`` are computed only when their flag
    input ``compute_grad_input`` / ``compute_guided_grad_input`` (bool scalar, default
    false) is fed true (:mod:`onnx_explain.gates`), so that a consumer that runs every node
    of the graph pays a prediction for Grad-CAM.  ``pixels``: the image input becomes
    ``pixels`` (uint8 N x H x W x 3 RGB at the input size), preprocessed in the graph.
    """
    if any(o.name in (contract.TARGET_CLASS, contract.SCORE, contract.ACTIVATIONS) for o in model.graph.output):
        raise ModelError("this model is already an explain model")
    wanted = _wanted_outputs(outputs, input_gradients, guided, gradcam)
    old = {p.key: p.value for p in model.metadata_props}
    plain = contract.read_plain_metadata(old)
    irm = load_for_rewriting(model, size=_declared_size(model, preprocess))
    graph = irm.graph
    forward = {id(n): _input_names(n) for n in graph}
    clf = find_classifier(graph)
    cand = choose_target_layer(graph, clf, layer)
    plan = ExplainPlan(clf, cand, input_gradients=contract.GRAD_INPUT in wanted,
                       guided=contract.GUIDED_GRAD_INPUT in wanted, gradcam=contract.GRADCAM in wanted)
    cam = find_cam_head(cand.value, clf.logits)
    pre = preprocess or plain.get("preprocess") or _default_preprocess(clf)

    passes = [AddTargetAndScorePass(plan), AddGradientsPass(plan)]
    maps = tuple(m for m in contract.IN_GRAPH_MAPS if m in wanted)
    if maps:
        passes.append(AddMapsPass(plan, maps))
    want_top_k = contract.TOP_K_VALUES in wanted or contract.TOP_K_INDICES in wanted
    if contract.PROBABILITIES in wanted or want_top_k:
        passes.append(AddPredictionPass(plan, contract.PROBABILITIES in wanted, top_k if want_top_k else None))
    if pixels:
        passes.append(AddPixelsInputPass(plan, pre))
    passes.append(_KeepOutputsPass(plan, clf, wanted))
    passes.append(RemoveUnusedNodesPass())
    try:
        ir.passes.Sequential(*passes)(irm)
    except ir.passes.PassError as exc:  # report our own errors as themselves, not wrapped
        cause = exc.__cause__
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ExplainError, ValueError)):
            raise cause from None
        raise
    target = next((v for v in graph.inputs if v.name == contract.TARGET), None)
    if target is not None and not target.uses():  # no output left that depends on it
        graph.inputs.remove(target)
    graph.sort()

    roles = {("logits" if not clf.ends_in_softmax else "probabilities"): clf.output.name}
    for name in plan.outputs:
        roles[contract.SOFTMAX_ROLE if name == contract.PROBABILITIES else name] = name
    meta = contract.ExplainMetadata(
        target_layer=cand.value.name,
        score="logit",
        outputs=roles,
        preprocess=pre,
        labels=labels if labels is not None else plain.get("labels"),
        cam=None if cam is None else dataclasses.asdict(cam),
    )
    props = {k: v for k, v in old.items() if not k.startswith(contract.METADATA_PREFIX)}
    props.update(meta.to_props())
    if pixels:
        props[contract.METADATA_PREFIX + "pixels"] = json.dumps(
            {"input": contract.PIXELS, "dtype": "uint8", "layout": "NHWC", "color": "RGB", "size": list(pre.size)})
    irm.metadata_props.clear()
    irm.metadata_props.update(props)
    out = ir.to_proto(irm)
    touched = any(id(n) in forward and forward[id(n)] != _input_names(n) for n in graph)
    if not touched:  # the passes only added nodes: the original file's forward can be kept
        out = with_original_forward(model, out, [id(n) not in forward for n in graph])
    if on_demand:
        from onnx_explain.gates import gate_outputs

        gated = [o for o in contract.ON_DEMAND_OUTPUTS if o in wanted]
        if gated:
            out = gate_outputs(out, gated, forward_outputs=[clf.output.name])
    onnx.checker.check_model(out)
    return out


def _wanted_outputs(outputs: Sequence[str] | None, input_gradients: bool, guided: bool, gradcam: bool) -> list[str]:
    """The contract outputs to add, in :data:`contract.ALL_OUTPUTS` order."""
    if outputs is None:
        chosen = {contract.TARGET_CLASS, contract.SCORE, contract.ACTIVATIONS, contract.GRAD_ACTIVATIONS}
        chosen |= {name for name, on in ((contract.GRAD_INPUT, input_gradients), (contract.GUIDED_GRAD_INPUT, guided),
                                         (contract.GRADCAM, gradcam)) if on}
    else:
        if isinstance(outputs, str):
            outputs = [outputs]
        if input_gradients or guided or gradcam:
            raise ValueError("give either outputs=[...] or the input_gradients / guided / gradcam switches, not both")
        chosen = set()
        for name in outputs:
            name = name.strip()
            if name == contract.TOP_K:
                chosen |= {contract.TOP_K_VALUES, contract.TOP_K_INDICES}
            elif name in contract.ALL_OUTPUTS:
                chosen.add(name)
            else:
                raise ValueError(f"unknown output {name!r}; choose from {', '.join(output_choices())}")
        if not chosen:
            raise ValueError(f"outputs is empty; choose from {', '.join(output_choices())}")
    return [o for o in contract.ALL_OUTPUTS if o in chosen]


def output_choices() -> list[str]:
    """The names ``outputs=`` / ``--outputs`` accept."""
    return [o for o in contract.ALL_OUTPUTS if o not in (contract.TOP_K_VALUES, contract.TOP_K_INDICES)] + [contract.TOP_K]


class _KeepOutputsPass(ir.passes.InPlacePass):
    """Drop the added outputs that were built only as inputs of others (the maps need
    ``activations`` and ``grad_activations``; the file lists only what was asked for)."""

    def __init__(self, plan: ExplainPlan, clf: Classifier, wanted: list[str]) -> None:
        super().__init__()
        self.plan, self.clf, self.wanted = plan, clf, set(wanted)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for value in list(graph.outputs):
            if value.name in self.plan.outputs and value.name not in self.wanted:
                graph.outputs.remove(value)
                del self.plan.outputs[value.name]
                modified = True
        order = {name: i for i, name in enumerate(contract.ALL_OUTPUTS)}
        own = [v for v in graph.outputs if v.name not in self.plan.outputs]
        added = sorted((v for v in graph.outputs if v.name in self.plan.outputs), key=lambda v: order[v.name])
        graph.outputs.clear()
        graph.outputs.extend(own + added)
        self.plan.outputs = {v.name: v.name for v in added}
        return ir.passes.PassResult(model, modified=modified)


def _input_names(node: ir.Node) -> list[str | None]:
    return [v.name if v is not None else None for v in node.inputs]


def _declared_size(model: onnx.ModelProto, preprocess: contract.Preprocess | None) -> tuple[int, int] | None:
    """The image size the user gave (``preprocess``), else the one in the model's metadata:
    what fixes a dynamic height/width."""
    source = preprocess or contract.read_plain_metadata({p.key: p.value for p in model.metadata_props}).get("preprocess")
    return None if source is None else tuple(source.size)


def _default_preprocess(clf: Classifier) -> contract.Preprocess:
    h, w = clf.spatial_size
    return contract.Preprocess(size=(h, w), layout=clf.layout)


def inspect_layers(model: onnx.ModelProto, size: tuple[int, int] | None = None
                   ) -> tuple[Classifier, list[Candidate], Candidate | None]:
    """The classifier facts, every 4-D activation between the image and the logits (each
    with the reason it is not usable, if it is not), and the one chosen by default (``None``
    when none is usable). ``size`` fixes a dynamic image size, as for :func:`augment_model`."""
    irm = load_for_rewriting(model, size=size or _declared_size(model, None))
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
