"""NoPeek: penalise the statistical dependence between raw inputs and cut-layer activations.

Vepakomma et al. (2020) add ``weight * dCor(x, h)`` to the data owner's loss so the activations
it sends carry less of the input's geometry, which is what inversion attacks exploit. Both sides
are compared as flat vectors: inputs (N, C*H*W) against activations (N, prod(cut_shape)). Titcombe
et al. (2021) report weights between 0.1 and 1 as a useful trade-off against accuracy.

dCor is the sample distance correlation of Székely, Rizzo & Bakirov (2007): double-centred
pairwise distance matrices, their mean elementwise product (distance covariance, the biased
V-statistic) normalised by the two distance variances. It is 1 when ``z`` is a scaled rigid
motion of ``x`` (``z = a + b x C`` with C orthonormal) and 0 for independent variables in the
limit. For finite batches of independent high-dimensional data it is biased upwards, so compare
values at one batch size and dimension only.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from defences.base import OwnerDefence, Param
from protocol.errors import ConfigError, ShapeError

# Inside every sqrt: keeps gradients finite at zero distance (the diagonal) and at dCor = 0.
_EPS = 1e-12


def _centred_distances(v: torch.Tensor) -> torch.Tensor:
    """Double-centred Euclidean distance matrix of the rows of ``v`` (B, d)."""
    sq = (v * v).sum(dim=1)
    # The Gram form is B x B memory instead of B x B x d; clamping undoes its rounding below 0.
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (v @ v.T)).clamp_min(0.0)
    d = torch.sqrt(d2 + _EPS)
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation between ``x`` (B, ...) and ``z`` (B, ...), in [0, 1].

    Each example is flattened first, so images (B, C, H, W) compare with cut activations of
    any shape.

    Differentiable with respect to ``z`` (and ``x`` if it requires grad). Computed in float64,
    whose cost is negligible next to the model (B x B matrices), because the float32 Gram form
    loses the small distances that decide dCor near 1; the result has ``z``'s dtype.
    """
    if x.dim() < 1 or z.dim() < 1 or x.shape[0] != z.shape[0]:
        raise ShapeError(
            f"distance correlation needs two batches of equal size, got {tuple(x.shape)} "
            f"and {tuple(z.shape)}"
        )
    if x.shape[0] < 2:
        raise ShapeError(f"distance correlation needs a batch of at least 2, got {x.shape[0]}")
    a = _centred_distances(x.reshape(x.shape[0], -1).to(torch.float64))
    b = _centred_distances(z.reshape(z.shape[0], -1).to(torch.float64))
    dcov2 = (a * b).mean()
    dvar2 = (a * a).mean() * (b * b).mean()
    # A constant batch has distance variance 0, and dCor is defined as 0 there: the floor on
    # the denominator gives exactly that instead of 0/0.
    dcor2 = (dcov2 / torch.sqrt(dvar2 + _EPS * _EPS)).clamp(0.0, 1.0)
    return torch.sqrt(dcor2 + _EPS).clamp(max=1.0).to(z.dtype)


class NoPeek(OwnerDefence):
    """The NoPeek penalty ``weight * dCor(x, z)``, added by the owner to its training loss."""

    name: ClassVar[str] = "nopeek"
    params: ClassVar[dict[str, Param]] = {"weight": Param("float", required=True)}

    def __init__(self, weight: float) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"--defence nopeek: weight must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"--defence nopeek: weight must be finite and >= 0, got {weight}")
        self.weight = float(weight)

    def loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The penalty for inputs ``x`` and the activations ``z`` they produced."""
        return self.weight * distance_correlation(x, z)

    penalty = loss
    __call__ = loss

    def __repr__(self) -> str:
        return f"NoPeek(weight={self.weight})"
