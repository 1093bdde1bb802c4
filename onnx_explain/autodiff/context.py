"""What a vector-Jacobian rule sees: one forward node, its output gradients, helpers."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

from onnx_explain.autodiff.emitter import Emitter, numpy_dtype
from onnx_explain.errors import UnsupportedOperatorError


def _where_shapes_stop(value: ir.Value) -> ir.Node | None:
    """The node upstream of ``value`` where shapes became unknown: the first one whose
    produced inputs all have known shapes while an output does not."""
    seen: set[int] = set()
    node = value.producer()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        unknown = [v for v in node.inputs if v is not None and v.shape is None and v.producer() is not None]
        if not unknown:
            return node
        node = unknown[0].producer()
    return None


class RuleContext:
    """Inputs of a rule.

    ``dy[i]`` is the gradient flowing into output ``i`` of ``node`` (``None`` = zero);
    the rule returns one gradient per node input, ``None`` where ``needs(i)`` is false.
    ``mode`` is ``"plain"`` or ``"guided"`` (guided backprop changes the Relu rule only).
    """

    def __init__(self, node: ir.Node, dy: Sequence[ir.Value | None], need: Sequence[bool], em: Emitter, mode: str, opset: int) -> None:
        self.node = node
        self.dy = list(dy)
        self._need = list(need)
        self.em = em
        self.mode = mode
        self.opset = opset

    # -- the node ---------------------------------------------------------------
    @property
    def x(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def y(self) -> ir.Value:
        return self.node.outputs[0]

    def input(self, i: int) -> ir.Value | None:
        return self.node.inputs[i] if i < len(self.node.inputs) else None

    def needs(self, i: int) -> bool:
        return i < len(self._need) and self._need[i]

    def attr(self, name: str, default: Any = None) -> Any:
        a = self.node.attributes.get(name)
        return default if a is None else a.value

    def unsupported(self, detail: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(self.node.op_type, self.node.name or "", detail)

    # -- static facts -----------------------------------------------------------
    def shape(self, value: ir.Value) -> list[int | None]:
        """Static dims of ``value`` (``None`` where dynamic); error when rank is unknown."""
        if value.shape is None:
            origin = _where_shapes_stop(value)
            if origin is not None and origin is not self.node:
                # the node that hides the shape is the one to name (a Loop, an If, a custom op),
                # not this one, which only needs it
                out = next((o for o in origin.outputs if o.shape is None), origin.outputs[0])
                domain = f" of domain {origin.domain!r}" if origin.domain not in ("", "ai.onnx") else ""
                raise UnsupportedOperatorError(
                    origin.op_type, origin.name or "",
                    f"the operator{domain} gives {out.name!r} with no known shape (shape inference does not see "
                    f"through it), so the {self.node.op_type} after it cannot be differentiated; choose a target "
                    "layer after it (--layer)")
            raise self.unsupported(f"the shape of {value.name!r} is unknown (run shape inference / give static input sizes)")
        return [d if isinstance(d, int) else None for d in value.shape]

    def static_shape(self, value: ir.Value, skip_batch: bool = True) -> list[int]:
        dims = self.shape(value)
        for i, d in enumerate(dims):
            if d is None and not (skip_batch and i == 0):
                raise self.unsupported(f"{value.name!r} needs static dims, got {dims}")
        return dims  # type: ignore[return-value]

    def constant(self, value: ir.Value | None) -> np.ndarray | None:
        """The value's content when it is an initializer or a Constant node's output."""
        if value is None:
            return None
        if value.const_value is not None:
            return value.const_value.numpy()
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant":
            attr = producer.attributes.get("value")
            if attr is not None:
                return attr.value.numpy()
            for key in ("value_float", "value_int"):
                if key in producer.attributes:
                    return np.asarray(producer.attributes[key].value)
            for key in ("value_floats", "value_ints"):
                if key in producer.attributes:
                    return np.asarray(list(producer.attributes[key].value))
        return None

    def require_constant(self, value: ir.Value | None, what: str) -> np.ndarray:
        arr = self.constant(value)
        if arr is None:
            raise self.unsupported(f"{what} must be a constant")
        return arr

    # -- emission shortcuts -----------------------------------------------------
    def op(self, op_type: str, *inputs: ir.Value | None, **attrs: Any) -> ir.Value:
        return self.em.op(op_type, *inputs, **attrs)

    def scalar(self, v: float, like: ir.Value | None = None) -> ir.Value:
        return self.em.scalar(v, like if like is not None else self.x)

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.em.ints(values)

    def shape_of(self, value: ir.Value) -> ir.Value:
        return self.op("Shape", value)

    def numpy_dtype(self, value: ir.Value | None = None):
        """NumPy element type of ``value`` (default: the node's first input), for constants
        built beside it; values the emitter created carry no type yet: its float type."""
        value = self.x if value is None else value
        return numpy_dtype(value.dtype or self.em.float_dtype)

    def zeros_like(self, value: ir.Value) -> ir.Value:
        zero = ir.tensor(np.zeros((1,), dtype=self.numpy_dtype(value)))
        return self.op("ConstantOfShape", self.shape_of(value), value=zero)
