"""Cut-layer dropout that stays on at inference.

Ordinary dropout switches off in ``eval()``, so at inference the server would see clean
activations. Here the data owner zeroes a random fraction ``rate`` of every activation it sends,
in training and inference alike, and scales the survivors by ``1 / (1 - rate)`` so the expected
activation is unchanged and the server's part needs no rescaling between training and inference.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from protocol.errors import ConfigError, ShapeError

_FLAG = "--defence dropout"


class CutLayerDropout(torch.nn.Module):
    """Always-on inverted dropout with its own seeded generator."""

    kind: ClassVar[str] = "dropout"

    def __init__(self, rate: float, seed: int = 0) -> None:
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ConfigError(f"{_FLAG}: rate must be a number, got {rate!r}")
        if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"{_FLAG}: rate must be in [0, 1), got {rate}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{_FLAG}: seed must be an integer >= 0, got {seed!r}")
        self.rate = float(rate)
        self.seed = seed
        # CPU generator so a seed gives the same masks whatever device the activations are on.
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Deliberately ignores self.training: the point is that inference is protected too.
        if not h.is_floating_point():
            raise ShapeError(f"{_FLAG}: expects floating activations, got {h.dtype}")
        if self.rate == 0.0:
            return h
        keep = torch.rand(h.shape, generator=self.generator) >= self.rate
        mask = keep.to(device=h.device, dtype=h.dtype) / (1.0 - self.rate)
        return h * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
