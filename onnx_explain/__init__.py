"""onnx-explain: Grad-CAM, CAM, saliency and relatives from one ONNX model, without torch."""

__version__ = "0.1.0"
