"""Black-box model inversion (He, Zhang & Lee, ACSAC 2019, section 4.2 "inverse network").

The adversary cannot see the first part's weights, but it can query it: it sends its own
auxiliary images through the data owner's public oracle, learns an inverse network
f^-1: activations -> image on those (activation, image) pairs with an MSE loss, and then
applies it to activations it intercepted. Everything here is plain torch, no Ray, no wire.

The inverse network is an MLP on the flattened activations, whatever the cut's shape: a
(N, 500) cut, a (N, 8, 24, 24) feature map or (N, classes) outputs all become (N, k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from attack.adam import Adam
from attack.base import Oracle, Rung, check_images, check_input_shape
from protocol.errors import ConfigError, ShapeError

__all__ = ["BlackBoxInversion", "InverseNet", "Oracle"]

#: Hidden width of the OpenMined / He et al. demo's inverse network.
HIDDEN = 1000


class InverseNet(nn.Module):
    """The inverse network of the OpenMined / He et al. demo: k -> 1000 -> prod(C, H, W)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.Sigmoid()
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def flat_acts(acts: np.ndarray) -> np.ndarray:
    """(N, *shape) -> (N, prod(shape)) float32; (N,) or a 0-d array is a ShapeError."""
    arr = np.asarray(acts)
    if arr.ndim < 2:
        raise ShapeError(f"activations must be (N, *cut_shape), got {arr.shape}")
    return arr.reshape(len(arr), math.prod(arr.shape[1:])).astype(np.float32, copy=False)


def check_pairs(acts: np.ndarray, images: np.ndarray, least: int = 1) -> np.ndarray:
    """Images as float32 (N, C, H, W) paired one-to-one with ``acts``, N >= ``least``."""
    x = check_images(images, "fit images")
    if np.asarray(acts).ndim < 2 or len(acts) != len(x) or len(x) < least:
        raise ShapeError(f"fit needs (N, *cut) activations and (N, C, H, W) images with "
                         f"N >= {least}, got {np.shape(acts)} and {x.shape}")
    return x


@dataclass
class BlackBoxInversion(Rung):
    """Query the oracle with auxiliary data, fit the inverse network, reconstruct.

    ``input_shape`` may be left None: ``fit`` takes it from the auxiliary images.
    """

    THREAD_INVARIANT: ClassVar[bool] = True  # dense layers only: checked in the tests

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    query_batch: int = 500
    seed: int = 0
    input_shape: tuple[int, int, int] | None = None
    model: nn.Module | None = field(default=None, repr=False)
    queries_used: int = 0
    #: Largest activation seen while fitting: inputs are clipped to a margin around it, so
    #: garbage (ciphertext read as floats, say) cannot drive the network to meaningless extremes.
    input_bound: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.query_batch < 1:
            raise ConfigError(
                f"{type(self).__name__} needs epochs >= 1, batch_size >= 1, lr > 0, "
                f"query_batch >= 1; got epochs={self.epochs} batch_size={self.batch_size} "
                f"lr={self.lr} query_batch={self.query_batch}"
            )
        self.input_shape = check_input_shape(self.input_shape, type(self).__name__)

    def fit(self, acts: np.ndarray, images: np.ndarray) -> nn.Module:
        x4 = check_pairs(acts, images)
        shape = self.adopt_shape(x4)
        flat = flat_acts(acts)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # the historical seeding: keeps mlp's default numbers
        model = InverseNet(flat.shape[1], HIDDEN, math.prod(shape))
        opt = Adam(model.parameters(), lr=self.lr)
        a, x = torch.from_numpy(flat), torch.from_numpy(x4.reshape(len(x4), -1))
        self.input_bound = float(np.abs(flat).max()) if flat.size else 1.0
        for _ in range(self.epochs):
            perm = torch.randperm(len(a), generator=gen)
            for start in range(0, len(a), self.batch_size):
                idx = perm[start:start + self.batch_size]
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(a[idx]), x[idx])
                loss.backward()
                opt.step()
        self.model = model.eval()
        return self.model

    def run(self, oracle: Oracle, aux: np.ndarray) -> nn.Module:
        return self.fit(self.collect(oracle, aux), aux)

    @torch.no_grad()
    def reconstruct(self, acts: np.ndarray) -> np.ndarray:
        if self.model is None or self.input_shape is None:
            raise RuntimeError("fit the inverse network before reconstructing")
        flat = flat_acts(acts)
        if len(flat) == 0:
            return self.empty()
        bound = 2.0 * self.input_bound
        safe = np.clip(np.nan_to_num(flat, nan=0.0, posinf=bound, neginf=-bound), -bound, bound)
        out = self.model(torch.from_numpy(safe)).numpy()
        return out.reshape(len(out), *self.input_shape).astype(np.float32, copy=False)
