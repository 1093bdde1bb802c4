"""Uploaded image bytes -> :class:`~onnx_explain.images.LoadedImage`, through the same
loader as the command line (format sniffing, header checks before decoding, EXIF
orientation, alpha, 16-bit), so a photo gives the server exactly what it gives
``onnx-explain explain``.

The loader reads files, so the bytes go to a private temporary folder (memory-backed
``/dev/shm`` where there is one) under a name the server makes up; no name a client sends
is ever used, and error messages say ``image N`` instead of any path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from onnx_explain.images import ImageError, LoadedImage, load_image
from onnx_explain.serve.errors import bad_request

#: The server's pixel cap per image (a 6000 x 4000 camera photo is 24 MP).
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecoder:
    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.folder = Path(tempfile.mkdtemp(prefix="onnx-explain-serve-", dir=base))
        self.max_pixels = int(max_pixels)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def decode(self, data: bytes, what: str = "image") -> LoadedImage:
        """The image in ``data``; a bad one raises a 400 naming ``what`` and the problem."""
        if not data:
            raise bad_request(f"{what}: empty")
        path = self.folder / uuid.uuid4().hex
        try:
            with open(path, "wb") as f:
                f.write(data)
            image = load_image(path, max_pixels=self.max_pixels)
        except ImageError as err:
            problem = getattr(err, "problem", None) or str(err).replace(str(path), what)
            raise bad_request(f"{what}: {problem}") from None
        finally:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        # the loaded image must not point at the deleted scratch file
        return dataclasses.replace(image, path=None)

    def decode_b64(self, text: object, what: str) -> LoadedImage:
        if not isinstance(text, str):
            raise bad_request(f"{what}: 'b64' must be a base64 string")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{what}: 'b64' is not valid base64") from None
        return self.decode(data, what)
