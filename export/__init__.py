"""The torch side: ``torch.nn.Module`` -> plain ONNX -> explain ONNX (needs torch).

Nothing past this package imports torch: the augmenter and the runtime work on ONNX.
"""

from .exporter import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportResult,
    export_model,
    export_plain,
    load_factory,
    resolve_model,
    save,
    set_plain_metadata,
    translate_layer,
)
from .layer_names import LayerNameError, module_output_name, module_paths, resolve_layer

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportResult",
    "LayerNameError",
    "export_model",
    "export_plain",
    "load_factory",
    "module_output_name",
    "module_paths",
    "resolve_layer",
    "resolve_model",
    "save",
    "set_plain_metadata",
    "translate_layer",
]
