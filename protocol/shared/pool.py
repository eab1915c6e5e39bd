"""Pooling on shares: average (local, public divisor) and max (pairwise maxima).

MaxPool2d reduces each window by a tree of pairwise maxima, max(a, b) = b + ReLU(a - b), with
every comparison of one tree level in a single batched ReLU (8 rounds a level: 2 levels for a
2x2 window). A tie picks a, the earlier element of the window, and so does the gradient: the
same element torch's max_pool2d routes it to. Backward walks the levels back, one round each:
d_a = g * [a >= b] (the comparison bit's random mask reused from the forward pass), d_b = g - d_a.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.errors import ShapeError
from protocol.shared import windows as win
from protocol.shared.core import (
    Ctx,
    Layer,
    Params,
    Proto,
    ReluOut,
    Shape,
    check_rank,
    relu,
    times_derivative,
)


def _pooled_shape(layer: Layer, in_shape: Shape, kernel: tuple[int, int],
                  stride: tuple[int, int], padding: tuple[int, int]) -> Shape:
    check_rank(layer, in_shape, 4)
    b, c, h, w = in_shape
    oh, ow = (win.out_size(n, k, s, p) for n, k, s, p in
              zip((h, w), kernel, stride, padding, strict=True))
    if oh < 1 or ow < 1:
        raise ShapeError(f"{type(layer).__name__}{kernel} cannot take {in_shape}")
    return (b, c, oh, ow)


@dataclass(frozen=True)
class AvgPool2d(Layer):
    """Window sums times a public 1/divisor (zero padding counts, as torch's default)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    divisor: int = 0  # 0: kh * kw

    @property
    def scale(self) -> float:
        return 1.0 / (self.divisor or self.kernel[0] * self.kernel[1])

    def out_shape(self, in_shape: Shape) -> Shape:
        return _pooled_shape(self, in_shape, self.kernel, self.stride, self.padding)

    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        self.out_shape(x.shape)
        sums = win.windows(x, self.kernel, self.stride, self.padding).sum((4, 5),
                                                                          dtype=np.uint64)
        return ctx.trunc(sums * ctx.encode(self.scale)), x.shape
        yield  # a program, with no rounds

    def backward(self, ctx: Ctx, params: Params, cache: Shape, dy: np.ndarray) -> Proto:
        g = dy * ctx.encode(self.scale)  # truncated once, after the windows are summed
        spread = np.broadcast_to(g[..., None, None], (*g.shape, *self.kernel))
        return ctx.trunc(win.unwindows(spread, cache, self.stride, self.padding)), {}
        yield


@dataclass
class MaxCache:
    in_shape: Shape
    out_shape: Shape
    levels: list[tuple[int, ReluOut]]  # per tree level: its width, its comparisons


@dataclass(frozen=True)
class MaxPool2d(Layer):
    kernel: tuple[int, int]
    stride: tuple[int, int]

    def out_shape(self, in_shape: Shape) -> Shape:
        return _pooled_shape(self, in_shape, self.kernel, self.stride, (0, 0))

    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        out_shape = self.out_shape(x.shape)
        cur = win.windows(x, self.kernel, self.stride, (0, 0)).reshape(-1, self.kernel[0]
                                                                         * self.kernel[1])
        levels = []
        while cur.shape[1] > 1:
            width = cur.shape[1]
            half = width // 2
            a, b = cur[:, 0:2 * half:2], cur[:, 1:2 * half:2]
            r = yield from relu(ctx, a - b)
            top = b + r.y
            cur = np.concatenate([top, cur[:, 2 * half:]], axis=1) if width % 2 else top
            levels.append((width, r))
        return cur.reshape(out_shape), MaxCache(x.shape, out_shape, levels)

    def backward(self, ctx: Ctx, params: Params, cache: MaxCache, dy: np.ndarray) -> Proto:
        g = dy.reshape(-1, 1)
        for width, r in reversed(cache.levels):
            half = width // 2
            g_a = yield from times_derivative(ctx, g[:, :half], r)
            wider = np.zeros((g.shape[0], width), np.uint64)
            wider[:, 0:2 * half:2] = g_a
            wider[:, 1:2 * half:2] = g[:, :half] - g_a
            if width % 2:
                wider[:, -1] = g[:, half]
            g = wider
        spread = g.reshape(*cache.out_shape, *self.kernel)
        return win.unwindows(spread, cache.in_shape, self.stride, (0, 0)), {}
