"""Elementwise arithmetic: Add, Sub, Mul, Div, Sum, Neg, Pow, Sqrt, Exp, Log, ..."""

from __future__ import annotations

from onnx_explain.autodiff.context import RuleContext
from onnx_explain.autodiff.registry import register
from onnx_explain.autodiff.rules._broadcast import unbroadcast


@register("Add", "Sum")
def add(ctx: RuleContext):
    dy = ctx.dy[0]
    return [unbroadcast(ctx, dy, v, ctx.y) if ctx.needs(i) else None for i, v in enumerate(ctx.node.inputs)]


@register("Sub")
def sub(ctx: RuleContext):
    a, b = ctx.node.inputs
    dy = ctx.dy[0]
    da = unbroadcast(ctx, dy, a, ctx.y) if ctx.needs(0) else None
    db = unbroadcast(ctx, ctx.op("Neg", dy), b, ctx.y) if ctx.needs(1) else None
    return [da, db]


@register("Mul")
def mul(ctx: RuleContext):
    a, b = ctx.node.inputs
    dy = ctx.dy[0]
    da = unbroadcast(ctx, ctx.op("Mul", dy, b), a, ctx.y) if ctx.needs(0) else None
    db = unbroadcast(ctx, ctx.op("Mul", dy, a), b, ctx.y) if ctx.needs(1) else None
    return [da, db]


@register("Div")
def div(ctx: RuleContext):
    a, b = ctx.node.inputs
    dy = ctx.dy[0]
    da = unbroadcast(ctx, ctx.op("Div", dy, b), a, ctx.y) if ctx.needs(0) else None
    db = None
    if ctx.needs(1):  # d(a/b)/db = -y / b
        db = unbroadcast(ctx, ctx.op("Neg", ctx.op("Div", ctx.op("Mul", dy, ctx.y), b)), b, ctx.y)
    return [da, db]


@register("Neg")
def neg(ctx: RuleContext):
    return [ctx.op("Neg", ctx.dy[0])]


@register("Identity", "Dropout")
def identity(ctx: RuleContext):
    # Dropout at inference is the identity on its first output; the mask is not differentiable.
    return [ctx.dy[0]] + [None] * (len(ctx.node.inputs) - 1)


@register("Cast")
def cast(ctx: RuleContext):
    return [ctx.op("Cast", ctx.dy[0], to=ctx.x.dtype)]


@register("Pow")
def pow_(ctx: RuleContext):
    if ctx.needs(1):
        raise ctx.unsupported("gradient with respect to the exponent")
    x, p = ctx.node.inputs
    pm1 = ctx.op("Sub", p, ctx.em.scalar(1.0, p))
    dx = ctx.op("Mul", ctx.op("Mul", ctx.dy[0], p), ctx.op("Pow", x, pm1))
    return [unbroadcast(ctx, dx, x, ctx.y), None]


@register("Sqrt")
def sqrt(ctx: RuleContext):
    return [ctx.op("Div", ctx.dy[0], ctx.op("Mul", ctx.y, ctx.scalar(2.0)))]


@register("Exp")
def exp(ctx: RuleContext):
    return [ctx.op("Mul", ctx.dy[0], ctx.y)]


@register("Log")
def log(ctx: RuleContext):
    return [ctx.op("Div", ctx.dy[0], ctx.x)]


@register("Reciprocal")
def reciprocal(ctx: RuleContext):
    return [ctx.op("Neg", ctx.op("Mul", ctx.dy[0], ctx.op("Mul", ctx.y, ctx.y)))]


@register("Abs")
def abs_(ctx: RuleContext):
    return [ctx.op("Mul", ctx.dy[0], ctx.op("Sign", ctx.x))]


@register("Where")
def where(ctx: RuleContext):
    cond, a, b = ctx.node.inputs
    dy = ctx.dy[0]
    zero = ctx.scalar(0.0, dy)
    da = unbroadcast(ctx, ctx.op("Where", cond, dy, zero), a, ctx.y) if ctx.needs(1) else None
    db = unbroadcast(ctx, ctx.op("Where", cond, zero, dy), b, ctx.y) if ctx.needs(2) else None
    return [None, da, db]


@register("Expand")
def expand(ctx: RuleContext):
    return [unbroadcast(ctx, ctx.dy[0], ctx.x, ctx.y), None]

