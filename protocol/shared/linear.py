"""Linear and Conv2d on shares: one Beaver product each way.

Linear is a Beaver matrix product. Forward: one round opens x - A and W - B. Backward:
dW = x^T dy reuses x's mask (transposed), dx = dy W^T reuses dy's mask from the dW triple and
W's mask (transposed), so only dy - B' is opened: one round. With public weights (revealed
model) the product is local and needs no triple.

Conv2d (weights stored as (C_in * kh * kw, C_out)) is the same product on the im2col matrix of
its input, but with a convolution triple (protocol.beaver "conv", CrypTen's): A has the input's
shape, so the forward opens X - A (the input's size; a matrix triple over im2col(X) would open
kh * kw times that) and W - B, and each party computes its share of im2col(X) W locally as
C + conv(E, B + F) + conv(A, F) (party 0 adds the public conv(E, F) through B + F). Backward:
dW = im2col(X)^T dY with a "convgrad" triple reusing A (E is opened already), dx = dY W^T
with W's mask (transposed) and dY's mask from the dW triple, then col2im: one round opening
only dY - B'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol import beaver, ring, ring_conv
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
class PendingProduct:
    """An inference product whose weight side is opened ahead of the input: W - B goes out in
    the preparation round, then c + P(A, W - B) (and B + (W - B) for party 0) are computed
    before the input arrives, so the online pass opens only x - A and does one ring product
    (P: the triple's matrix product or convolution)."""

    triple: Triple
    masked: np.ndarray  # this party's W - B
    pre: np.ndarray | None = None
    b: np.ndarray | None = None

    def finish(self, ctx: Ctx, f: np.ndarray) -> PendingProduct:
        t = self.triple
        self.pre = t.c + t.spec.product(t.a, f)
        self.b = t.b + f if ctx.party == 0 else t.b
        return self


def weight_prepare(ctx: Ctx, spec: TripleSpec, w: np.ndarray) -> PendingProduct:
    _, t = ctx.take(spec)
    return PendingProduct(t, w - t.b)


def prepared_product(ctx: Ctx, x: np.ndarray) -> Proto:
    """The online half of a prepared product: open x - A, one ring product (untruncated)."""
    if not ctx.prepared:
        raise ShapeError("no prepared weights left: one preparation serves one batch")
    prep = ctx.prepared.popleft()  # consumed: reusing a mask A for two inputs would leak
    if prep.triple.a.shape != x.shape:
        raise ShapeError(f"weights prepared for {prep.triple.a.shape}, input is {x.shape}")
    (e,) = yield Open([x - prep.triple.a], [False])
    return prep.pre + prep.triple.spec.product(e, prep.b)


def matmul_forward(ctx: Ctx, x: np.ndarray, w: np.ndarray) -> Proto:
    """Shares of x @ w (truncated) and the cache its backward pass needs."""
    if ctx.public_weights:
        return ctx.trunc(ring.matmul(x, w)), None
    if ctx.prepared is not None:
        z = yield from prepared_product(ctx, x)
        return ctx.trunc(z), None
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

    def prepare(self, ctx: Ctx, params: Params, in_shape: Shape) -> PendingProduct | None:
        w = params["weight"]
        return weight_prepare(ctx, beaver.matmul(in_shape[0], *w.shape), w)

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


@dataclass
class ConvCache:
    e: np.ndarray  # opened X - A, the input's shape
    f: np.ndarray  # opened W - B, (C_in kh kw, C_out)
    index: int  # the forward conv triple's plan index


@dataclass(frozen=True)
class Conv2d(Layer):
    """Convolution on convolution triples (see the module); weight (C_in * kh * kw, C_out) in
    torch's (C_in, kh, kw) order, bias (C_out,)."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    bias: bool = True

    @property
    def geometry(self) -> ring_conv.Geometry:
        return (*self.kernel, *self.stride, *self.padding)

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

    def prepare(self, ctx: Ctx, params: Params, in_shape: Shape) -> PendingProduct | None:
        self.out_shape(in_shape)
        w = params["weight"]
        return weight_prepare(ctx, beaver.conv(in_shape, w.shape, self.geometry), w)

    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        b, _, oh, ow = self.out_shape(x.shape)
        w, cache = params["weight"], None
        if ctx.public_weights:  # a local product: the im2col matrix is never opened
            z = ctx.trunc(ring.matmul(ring_conv.im2col(x, self.geometry), w))
        elif ctx.prepared is not None:
            z = ctx.trunc((yield from prepared_product(ctx, x)))
        else:
            spec = beaver.conv(x.shape, w.shape, self.geometry)
            (p,) = yield from products(ctx, [(spec, Factor(x), Factor(w))])
            z, cache = ctx.trunc(p.z), ConvCache(p.e, p.f, p.index)
        if self.bias:
            z = ctx.add_bias(z, params["bias"])
        y = np.ascontiguousarray(z.reshape(b, oh, ow, -1).transpose(0, 3, 1, 2))
        return y, cache

    def backward(self, ctx: Ctx, params: Params, cache: ConvCache, dy: np.ndarray) -> Proto:
        b, n, oh, ow = dy.shape
        in_shape = cache.e.shape
        m, k = b * oh * ow, cache.f.shape[0]
        dz = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(m, n)
        dw_spec = TripleSpec("convgrad", in_shape, (m, n), a_ref=(cache.index, "a", False),
                             geometry=self.geometry)
        dx_spec = TripleSpec("matmul", (m, n), (n, k), a_ref=(ctx.store.taken, "b", False),
                             b_ref=(cache.index, "b", True))
        f_t = np.ascontiguousarray(cache.f.T)
        dw, dcols = yield from _backward_products(ctx, dw_spec, dx_spec, cache.e, f_t, dz)
        dcols = dcols.reshape(b, oh, ow, self.in_channels, *self.kernel).transpose(0, 3, 1, 2,
                                                                                    4, 5)
        dx = ctx.trunc(win.unwindows(dcols, in_shape, self.stride, self.padding))
        grads = {"weight": ctx.trunc(dw)}
        if self.bias:
            grads["bias"] = dy.sum((0, 2, 3), dtype=np.uint64)
        return dx, grads
