"""Open Inference Protocol tensors: datatypes, JSON data and the binary tensor extension.

JSON tensors carry ``data`` as a flat (row-major) or nested list.  With the binary tensor
data extension an input's bytes follow the JSON object in the body (its
``parameters.binary_data_size`` says how many; the ``Inference-Header-Content-Length``
header says where the JSON ends), little-endian, row-major, no padding; an output is
returned that way when its request asks ``binary_data: true`` or the request asks
``binary_data_output: true``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from onnx_explain.serve.errors import ApiError, bad_request, quoted

#: Protocol datatype -> little-endian numpy dtype (BYTES, strings, is not a tensor we take).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

_ONNX = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
}

HEADER = "Inference-Header-Content-Length"
MAX_RANK = 8


def datatype_of(value_info: onnx.ValueInfoProto) -> str:
    elem = value_info.type.tensor_type.elem_type
    return _ONNX.get(elem, onnx.TensorProto.DataType.Name(elem))


def shape_of(value_info: onnx.ValueInfoProto) -> list[int]:
    """Declared shape, ``-1`` for a dimension that is not a fixed number."""
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in value_info.type.tensor_type.shape.dim]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of an inference request body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise bad_request(f"{HEADER} must be an integer") from None
    if not 0 < n <= len(body):
        raise bad_request(f"{HEADER} is {n} but the body has {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _shape(spec: dict, where: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise bad_request(f"{where}: 'shape' must be a list of at most {MAX_RANK} non-negative integers")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0 or d > 2**31:
            raise bad_request(f"{where}: 'shape' must be a list of non-negative integers, got {quoted(shape)}")
    return tuple(shape)


def decode_input(spec: Any, binary: memoryview, offset: int, max_elements: int) -> tuple[str, np.ndarray, int]:
    """``(name, array, bytes used from binary)`` of one ``$request_input``."""
    if not isinstance(spec, dict):
        raise bad_request("each input must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str):
        raise bad_request("each input needs a 'name' string")
    where = f"input {quoted(name)}"
    shape = _shape(spec, where)
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise bad_request(f"{where}: unsupported datatype {quoted(datatype)}; use one of {', '.join(DATATYPES)}")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if count > max_elements:
        raise ApiError(413, f"{where}: {count} elements is more than this server takes ({max_elements})")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request(f"{where}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad_request(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in spec:
            raise bad_request(f"{where}: has both 'data' and binary_data_size")
        if size != count * dtype.itemsize:
            raise bad_request(f"{where}: binary_data_size {size} does not match shape {list(shape)} of {datatype} "
                              f"({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise bad_request(f"{where}: the body has {len(binary) - offset} binary bytes left, {size} declared")
        array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
        if datatype == "BOOL" and array.size and np.frombuffer(binary[offset : offset + size], np.uint8).max() > 1:
            raise bad_request(f"{where}: BOOL bytes must be 0 or 1")
        return name, array, size
    if "data" not in spec:
        raise bad_request(f"{where}: needs 'data' (or binary data with parameters.binary_data_size)")
    return name, _from_json(spec["data"], shape, dtype, datatype, where), 0


def _from_json(data: Any, shape: tuple[int, ...], dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise bad_request(f"{where}: 'data' must be a list")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise bad_request(f"{where}: 'data' is not a regular list of numbers") from None
    if raw.size == 0 and math.prod(shape) == 0:
        raw = raw.astype(dtype)
    kind = raw.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b"
    elif dtype.kind in "iu":
        ok = kind in "iu"
    else:
        ok = kind in "iuf"
    if raw.size and not ok:
        expected = "true/false" if datatype == "BOOL" else ("integers" if dtype.kind in "iu" else "numbers")
        raise bad_request(f"{where}: 'data' must hold {expected} for datatype {datatype}")
    if raw.size != math.prod(shape):
        raise bad_request(f"{where}: 'data' has {raw.size} elements, shape {list(shape)} needs {math.prod(shape)}")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise bad_request(f"{where}: a value is out of range for {datatype}")
    return raw.astype(dtype).reshape(shape)


def encode_output(name: str, array: np.ndarray, datatype: str, binary: bool) -> tuple[dict, bytes | None]:
    """``($response_output, binary bytes or None)``."""
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [int(d) for d in array.shape]}
    dtype = DATATYPES[datatype]
    if binary:
        raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        return out, raw
    flat = np.asarray(array, dtype=dtype).reshape(-1)
    if dtype.kind == "f" and not np.isfinite(flat).all():
        out["data"] = [float(v) if math.isfinite(v) else None for v in flat.tolist()]
    else:
        out["data"] = flat.tolist()
    return out, None
