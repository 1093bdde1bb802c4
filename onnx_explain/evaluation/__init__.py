"""Measuring explanations: localization (boxes, IoU, pointing game) and faithfulness
(RISE deletion/insertion, Grad-CAM++ average drop / increase in confidence).

Conventions shared by every module here:

* boxes (:class:`Box`) are in original-image pixels, 0-based, pixel-edge coordinates
  with an exclusive maximum (``image[ymin:ymax, xmin:xmax]``); Pascal VOC's 1-based
  inclusive coordinates are converted on reading and writing;
* heatmaps are ``H x W`` at the original image resolution, values in [0, 1];
* AUC is the trapezoidal area under the target-class probability against the
  fraction of pixels changed, x in [0, 1].

Only numpy and OpenCV are needed; plots import matplotlib and the demo data set
scikit-image, lazily.
"""

from .boxes import (
    AnnotationError,
    Box,
    ImageAnnotation,
    load_annotations,
    match_annotations,
    read_boxes_csv,
    read_voc_dir,
    read_voc_xml,
    write_boxes_csv,
    write_voc_xml,
)
from .evaluate import EvaluationResult, evaluate, load_rgb
from .faithfulness import (
    Curve,
    auc,
    average_drop,
    baseline_from_preprocess,
    confidence_change,
    deletion,
    explanation_map,
    increase_in_confidence,
    insertion,
    rise_blur,
)
from .localization import best_iou, box_from_heatmap, boxes_mask, energy_pointing_game, iou, pointing_game_hit
from .report import ImageRecord, format_table, summarize, write_csv, write_json

__all__ = [
    "AnnotationError",
    "Box",
    "ImageAnnotation",
    "load_annotations",
    "match_annotations",
    "read_boxes_csv",
    "read_voc_dir",
    "read_voc_xml",
    "write_boxes_csv",
    "write_voc_xml",
    "EvaluationResult",
    "evaluate",
    "load_rgb",
    "Curve",
    "auc",
    "average_drop",
    "baseline_from_preprocess",
    "confidence_change",
    "deletion",
    "explanation_map",
    "increase_in_confidence",
    "insertion",
    "rise_blur",
    "best_iou",
    "box_from_heatmap",
    "boxes_mask",
    "energy_pointing_game",
    "iou",
    "pointing_game_hit",
    "ImageRecord",
    "format_table",
    "summarize",
    "write_csv",
    "write_json",
]
