"""``onnx-explain serve``: an explain model behind HTTP (Open Inference Protocol v2, KServe v1).

Needs the ``[serve]`` extra (FastAPI, uvicorn, prometheus-client, python-multipart); the
base runtime does not import anything from here.
"""
