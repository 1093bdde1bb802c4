"""Emits new nodes and constants into an onnx-ir graph with unique, readable names."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

_NP_OF = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.BOOL: np.bool_,
}


def numpy_dtype(dtype: ir.DataType) -> Any:
    try:
        return _NP_OF[dtype]
    except KeyError:
        raise TypeError(f"unsupported tensor type {dtype}") from None


class Emitter:
    """Appends nodes to ``graph``; every emitted name starts with ``prefix``."""

    def __init__(self, graph: ir.Graph, prefix: str = "grad", float_dtype: ir.DataType = ir.DataType.FLOAT) -> None:
        self.graph = graph
        # Element type of emitted float constants whose reference value has no known type
        # (values created by the emitter itself carry none until shape inference runs).
        self.float_dtype = float_dtype
        self.prefix = prefix
        self._count = 0
        self._consts: dict[tuple, ir.Value] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs: ir.Value | None, name_hint: str | None = None, **attrs: Any) -> ir.Value:
        return self.op_multi(op_type, inputs, 1, name_hint=name_hint, **attrs)[0]

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        num_outputs: int,
        name_hint: str | None = None,
        **attrs: Any,
    ) -> Sequence[ir.Value]:
        attributes = ir.convenience.convert_attributes({k: v for k, v in attrs.items() if v is not None})
        name = self._name(name_hint or op_type)
        node = ir.Node("", op_type, list(inputs), attributes=attributes, num_outputs=num_outputs, name=name)
        for i, out in enumerate(node.outputs):
            out.name = name if num_outputs == 1 else f"{name}:{i}"
        self.graph.append(node)
        return node.outputs

    def const(self, array: Any, dtype: Any = None, hint: str = "const") -> ir.Value:
        """An initializer holding ``array`` (deduplicated by value)."""
        arr = np.asarray(array, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts:
            return self._consts[key]
        value = ir.Value(name=self._name(hint), const_value=ir.tensor(arr))
        value.shape = ir.Shape(arr.shape)
        value.type = ir.TensorType(ir.DataType.from_numpy(arr.dtype))
        self.graph.register_initializer(value)
        self._consts[key] = value
        return value

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.const(np.asarray(list(values), dtype=np.int64), hint="ints")

    def scalar(self, value: float, like: ir.Value) -> ir.Value:
        """A scalar constant with the element type of ``like``."""
        dtype = like.dtype if like.dtype is not None else self.float_dtype
        return self.const(np.asarray(value, dtype=numpy_dtype(dtype)), hint="scalar")
