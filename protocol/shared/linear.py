"""Linear and Conv2d on shares: one Beaver matrix product each way.

Both are the same matrix product (Conv2d on the im2col matrix of its input, weights stored as
(C_in * kh * kw, C_out)). Forward: one round opens x - A and W - B. Backward: dW = x^T dy
reuses x's mask (transposed), dx = dy W^T reuses dy's mask from the dW triple and W's mask
(transposed), so only dy - B' is opened: one round. With public weights (revealed model) the
product is local and needs no triple.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol import beaver, ring
from protocol.beaver import Triple, TripleSpec
from protocol.errors import ShapeError
from protocol.mpc import Open
from protocol.shared import windows as win
from protocol.shared.core import Ctx, Factor, Layer, Params, Proto, Shape, check_rank, products


@dataclass
class MatCache:
    e: np.ndarray  # opened x - A, (m, k)
    f: np.ndarray  # opened W - B, (k, n)
    index: int  # the forward triple's plan index


@dataclass
class PendingMatmul:
    """An inference product whose weight side is opened ahead of the input: W - B goes out in
    the preparation round, then c + A (W - B) (and B + (W - B) for party 0) are computed
    before the input arrives, so the online pass opens only x - A and does one ring product."""

    triple: Triple
    masked: np.ndarray  # this party's W - B
    pre: np.ndarray | None = None
    b: np.ndarray | None = None

    def finish(self, ctx: Ctx, f: np.ndarray) -> PendingMatmul:
        t = self.triple
        self.pre = t.c + ring.matmul(t.a, f)
        self.b = t.b + f if ctx.party == 0 else t.b
        return self


def matmul_prepare(ctx: Ctx, m: int, w: np.ndarray) -> PendingMatmul:
    _, t = ctx.take(beaver.matmul(m, w.shape[0], w.shape[1]))
    return PendingMatmul(t, w - t.b)


def matmul_forward(ctx: Ctx, x: np.ndarray, w: np.ndarray) -> Proto:
    """Shares of x @ w (truncated) and the cache its backward pass needs."""
    if ctx.public_weights:
        return ctx.trunc(ring.matmul(x, w)), None
    if ctx.prepared is not None:
        if not ctx.prepared:
            raise ShapeError("no prepared weights left: one preparation serves one batch")
        prep = ctx.prepared.popleft()  # consumed: reusing a mask A for two inputs would leak
        if prep.triple.a.shape != x.shape:
            raise ShapeError(f"weights prepared for {prep.triple.a.shape}, input is {x.shape}")
        (e,) = yield Open([x - prep.triple.a], [False])
        return ctx.trunc(prep.pre + ring.matmul(e, prep.b)), None
    spec = beaver.matmul(x.shape[0], x.shape[1], w.shape[1])
    (p,) = yield from products(ctx, [(spec, Factor(x), Factor(w))])
    return ctx.trunc(p.z), MatCache(p.e, p.f, p.index)


def matmul_backward(ctx: Ctx, cache: MatCache, dz: np.ndarray) -> Proto:
    """(dx, dw) for z = x @ w, one round: only dz's mask is opened. dx is returned before
    truncation (2f fractional bits): Conv2d sums up to kh * kw entries of it per input
    position first, so the sum is truncated once (error 2 units, not 2 kh kw)."""
    (m, k), n = cache.e.shape, cache.f.shape[1]
    dw_spec = TripleSpec("matmul", (k, m), (m, n), a_ref=(cache.index, "a", True))
    e_t = np.ascontiguousarray(cache.e.T)
    f_t = np.ascontiguousarray(cache.f.T)
    dw_index = ctx.store.taken
    dx_spec = TripleSpec("matmul", (m, n), (n, k), a_ref=(dw_index, "b", False),
                         b_ref=(cache.index, "b", True))
    dw, dx = yield from _backward_products(ctx, dw_spec, dx_spec, e_t, f_t, dz)
    return dx, ctx.trunc(dw)


def _backward_products(ctx: Ctx, dw_spec: TripleSpec, dx_spec: TripleSpec, e_t: np.ndarray,
                       f_t: np.ndarray, dz: np.ndarray) -> Proto:
    # dz is opened once, by the dW product; the dx product reads that opening (its mask is
    # the dW triple's "b"), so it runs after it, in the same round.
    (p_dw,) = yield from products(ctx, [(dw_spec, Factor(opened=e_t), Factor(dz))])
    (p_dx,) = yield from products(ctx, [(dx_spec, Factor(opened=p_dw.f), Factor(opened=f_t))])
    return p_dw.z, p_dx.z


@dataclass(frozen=True)
class Linear(Layer):
    in_features: int
    out_features: int
    bias: bool = True

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        shapes = {"weight": (self.in_features, self.out_features)}
        return shapes | ({"bias": (self.out_features,)} if self.bias else {})

    def out_shape(self, in_shape: Shape) -> Shape:
        check_rank(self, in_shape, 2)
        if in_shape[1] != self.in_features:
            raise ShapeError(f"Linear({self.in_features}, {self.out_features}) got {in_shape}")
        return (in_shape[0], self.out_features)

    def prepare(self, ctx: Ctx, params: Params, in_shape: Shape) -> PendingMatmul | None:
        return matmul_prepare(ctx, in_shape[0], params["weight"])

    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        self.out_shape(x.shape)
        z, cache = yield from matmul_forward(ctx, x, params["weight"])
        return (ctx.add_bias(z, params["bias"]) if self.bias else z), cache

    def backward(self, ctx: Ctx, params: Params, cache: MatCache, dy: np.ndarray) -> Proto:
        dx, dw = yield from matmul_backward(ctx, cache, dy)
        dx = ctx.trunc(dx)
        grads = {"weight": dw}
        if self.bias:
            grads["bias"] = dy.sum(0, dtype=np.uint64)
        return dx, grads


@dataclass(frozen=True)
class Conv2d(Layer):
    """Convolution as im2col + matrix product; weight (C_in * kh * kw, C_out) in torch's
    (C_in, kh, kw) order, bias (C_out,)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    bias: bool = True

    def param_shapes(self, in_shape: Shape) -> dict[str, Shape]:
        k = self.in_channels * self.kernel[0] * self.kernel[1]
        shapes = {"weight": (k, self.out_channels)}
        return shapes | ({"bias": (self.out_channels,)} if self.bias else {})

    def out_shape(self, in_shape: Shape) -> Shape:
        check_rank(self, in_shape, 4)
        b, c, h, w = in_shape
        oh, ow = (win.out_size(n, k, s, p) for n, k, s, p in
                  zip((h, w), self.kernel, self.stride, self.padding, strict=True))
        if c != self.in_channels or oh < 1 or ow < 1:
            raise ShapeError(f"Conv2d({self.in_channels}, {self.out_channels}, "
                             f"{self.kernel}) cannot take {in_shape}")
        return (b, self.out_channels, oh, ow)

    def prepare(self, ctx: Ctx, params: Params, in_shape: Shape) -> PendingMatmul | None:
        b, _, oh, ow = self.out_shape(in_shape)
        return matmul_prepare(ctx, b * oh * ow, params["weight"])

    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        b, _, oh, ow = self.out_shape(x.shape)
        cols = win.windows(x, self.kernel, self.stride, self.padding)  # (B, C, OH, OW, kh, kw)
        cols = np.ascontiguousarray(cols.transpose(0, 2, 3, 1, 4, 5)).reshape(b * oh * ow, -1)
        z, cache = yield from matmul_forward(ctx, cols, params["weight"])
        if self.bias:
            z = ctx.add_bias(z, params["bias"])
        y = np.ascontiguousarray(z.reshape(b, oh, ow, -1).transpose(0, 3, 1, 2))
        return y, (cache, x.shape)

    def backward(self, ctx: Ctx, params: Params, cache: tuple[MatCache, Shape],
                 dy: np.ndarray) -> Proto:
        mat, in_shape = cache
        b, _, oh, ow = dy.shape
        dz = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(b * oh * ow, -1)
        dcols, dw = yield from matmul_backward(ctx, mat, dz)
        dcols = dcols.reshape(b, oh, ow, self.in_channels, *self.kernel).transpose(0, 3, 1, 2,
                                                                                    4, 5)
        dx = ctx.trunc(win.unwindows(dcols, in_shape, self.stride, self.padding))
        grads = {"weight": dw}
        if self.bias:
            grads["bias"] = dy.sum((0, 2, 3), dtype=np.uint64)
        return dx, grads
