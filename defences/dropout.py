"""Cut-layer dropout that stays on at inference.

Ordinary dropout switches off in ``eval()``, so at inference the server would see clean
activations. Here the data owner zeroes a random fraction ``rate`` of every activation element
it sends (any cut shape: each element of (N, *cut_shape) is kept or dropped on its own), in
training and inference alike, and scales the survivors by ``1 / (1 - rate)`` so the expected
activation is unchanged and the server's part needs no rescaling between training and inference.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from defences.base import OwnerDefence, Param, check_seed, defence_generator
from protocol.errors import ConfigError, ShapeError

_FLAG = "--defence dropout"


class CutLayerDropout(OwnerDefence, torch.nn.Module):
    """Always-on inverted dropout with its own seeded generator (one per owner stream)."""

    name: ClassVar[str] = "dropout"
    params: ClassVar[dict[str, Param]] = {
        "rate": Param("float", required=True),
        "seed": Param("int"),
    }
    # First: the noise defence then clips and noises whatever survives.
    order: ClassVar[int] = 10
    random: ClassVar[bool] = True

    def __init__(self, rate: float, seed: int = 0, *, stream: int | str = 0) -> None:
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ConfigError(f"{_FLAG}: rate must be a number, got {rate!r}")
        if not math.isfinite(rate) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"{_FLAG}: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = check_seed(_FLAG, seed)
        self.stream = stream
        # CPU generator so a seed gives the same masks whatever device the activations are on.
        self.generator = defence_generator(seed, stream, self.name)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (N, *cut_shape) with each element dropped at ``rate``, survivors rescaled."""
        # Deliberately ignores self.training: the point is that inference is protected too.
        if not h.is_floating_point():
            raise ShapeError(f"{_FLAG}: expects floating activations, got {h.dtype}")
        if self.rate == 0.0:
            return h
        keep = torch.rand(h.shape, generator=self.generator) >= self.rate
        mask = keep.to(device=h.device, dtype=h.dtype) / (1.0 - self.rate)
        return h * mask

    forward = transform

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
