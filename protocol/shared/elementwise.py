"""ReLU and Flatten on shares.

ReLU is protocol.mpc's comparison circuit (8 rounds); its backward pass is one product with the
derivative bit, whose random mask and opening are reused from the forward pass's last round,
so only the incoming gradient is opened (one round). Flatten is a local reshape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.errors import ShapeError
from protocol.shared.core import Ctx, Layer, Params, Proto, ReluOut, Shape, relu, times_derivative


@dataclass(frozen=True)
class ReLU(Layer):
    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        r = yield from relu(ctx, x)
        return r.y, r

    def backward(self, ctx: Ctx, params: Params, cache: ReluOut, dy: np.ndarray) -> Proto:
        dx = yield from times_derivative(ctx, dy, cache)
        return dx, {}


@dataclass(frozen=True)
class Flatten(Layer):
    """(B, ...) -> (B, prod(...)), as nn.Flatten() / torch.flatten(x, 1)."""

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) < 2:
            raise ShapeError(f"Flatten takes a batch (B, ...), got {in_shape}")
        return (in_shape[0], int(np.prod(in_shape[1:], dtype=np.int64)))

    def forward(self, ctx: Ctx, params: Params, x: np.ndarray) -> Proto:
        return x.reshape(self.out_shape(x.shape)), x.shape
        yield  # a program, with no rounds

    def backward(self, ctx: Ctx, params: Params, cache: Shape, dy: np.ndarray) -> Proto:
        return dy.reshape(cache), {}
        yield
