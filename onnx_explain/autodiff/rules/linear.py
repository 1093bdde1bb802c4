"""Gemm and MatMul: the gradient is the transposed product with the other operand.

When the output gradient is the one-hot seed of a class score (a classifier's last layer),
the product is a row lookup: ``Gather`` reads one weight row per image instead of
multiplying by the whole classes x features matrix, which at batch 1 is most of what a
Grad-CAM run adds to the forward.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register
from onnx_explain.autodiff.rules._broadcast import unbroadcast


@register("Gemm")
def gemm(ctx: RuleContext):
    a, b = ctx.node.inputs[0], ctx.node.inputs[1]
    c = ctx.input(2)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    dy = ctx.dy[0]
    da = db = dc = None
    # Y = alpha * A' B' + beta * C with A' = A^T if transA, B' = B^T if transB.
    hot = _one_hot_indices(ctx, dy)
    if ctx.needs(0) and hot is not None and not ta:
        # dA[n] = alpha * B'^T[hot[n]]: row hot[n] of B (transB) or column hot[n] of B.
        da = ctx.op("Gather", b, hot, axis=0) if tb else ctx.op("Transpose", ctx.op("Gather", b, hot, axis=1), perm=[1, 0])
        if alpha != 1.0:
            da = ctx.op("Mul", da, ctx.scalar(alpha, dy))
    elif ctx.needs(0):
        if ta:
            da = ctx.op("Gemm", b, dy, alpha=alpha, transA=tb, transB=1)
        else:
            da = ctx.op("Gemm", dy, b, alpha=alpha, transB=1 - tb)
    if ctx.needs(1):
        if tb:
            db = ctx.op("Gemm", dy, a, alpha=alpha, transA=1, transB=ta)
        else:
            db = ctx.op("Gemm", a, dy, alpha=alpha, transA=1 - ta)
    if ctx.needs(2) and c is not None:
        scaled = dy if beta == 1.0 else ctx.op("Mul", dy, ctx.scalar(beta, dy))
        dc = unbroadcast(ctx, scaled, c, ctx.y)
    return [da, db, dc]


def _one_hot_indices(ctx: RuleContext, dy: ir.Value | None) -> ir.Value | None:
    """The class indices when ``dy`` is ``OneHot(indices)`` with values 0 / 1 on its last axis
    of a 2-D gradient, else ``None``."""
    producer = dy.producer() if dy is not None else None
    if producer is None or producer.op_type != "OneHot" or producer.domain not in ("", "ai.onnx"):
        return None
    axis = producer.attributes.get("axis")
    values = ctx.constant(producer.inputs[2])
    if (axis is not None and axis.value not in (-1, 1)) or values is None or list(np.ravel(values)) != [0, 1]:
        return None
    return producer.inputs[0]  # 1-D: the gradient of a 2-D product is 2-D


def _swap_last(ctx: RuleContext, v):
    rank = len(ctx.shape(v))
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.op("Transpose", v, perm=perm)


@register("MatMul")
def matmul(ctx: RuleContext):
    a, b = ctx.node.inputs
    if len(ctx.shape(a)) < 2 or len(ctx.shape(b)) < 2:
        raise ctx.unsupported("MatMul with a 1-D operand")
    dy = ctx.dy[0]
    da = db = None
    hot = _one_hot_indices(ctx, dy)
    if ctx.needs(0) and hot is not None and len(ctx.shape(a)) == 2 and len(ctx.shape(b)) == 2:
        da = ctx.op("Transpose", ctx.op("Gather", b, hot, axis=1), perm=[1, 0])  # column hot[n] of B
    elif ctx.needs(0):
        da = ctx.op("MatMul", dy, _swap_last(ctx, b))
        if len(ctx.shape(a)) != len(ctx.shape(ctx.y)) or len(ctx.shape(a)) > 2:
            da = _unbroadcast_batch(ctx, da, a)
    if ctx.needs(1):
        db = ctx.op("MatMul", _swap_last(ctx, a), dy)
        if len(ctx.shape(b)) != len(ctx.shape(ctx.y)) or len(ctx.shape(b)) > 2:
            db = _unbroadcast_batch(ctx, db, b)
    return [da, db]


def _unbroadcast_batch(ctx: RuleContext, grad, x):
    """Sum a batched product's gradient over the batch dims that ``x`` was broadcast along."""
    xs, ys = ctx.shape(x), ctx.shape(ctx.y)
    lead = len(ys) - len(xs)
    axes = list(range(lead)) + [i + lead for i, d in enumerate(xs[:-2]) if d == 1 and ys[i + lead] != 1]
    if not axes:
        return grad
    return ctx.op("Reshape", ctx.op("ReduceSum", grad, ctx.ints(axes), keepdims=1), ctx.shape_of(x))
