"""Label defences (Li et al., ICLR 2022): perturb the gradient a U-shaped owner sends back.

Each works on one batch's per-example gradients ``g`` (B, d) w.r.t. the middle's output, with
the batch's labels, through :meth:`~defences.base.OwnerDefence.gradient`, so they need
``--topology u-shaped`` (under vanilla the server is sent the labels themselves).

* ``max-norm:scale=S`` -- Li et al.'s max-norm heuristic, as in the authors' code: example j's
  gradient is multiplied by ``1 + S * sigma_j * xi`` (xi ~ N(0, 1), one scalar per example)
  with ``sigma_j = sqrt(max_i ||g_i||^2 / ||g_j||^2 - 1)``, so every example's expected
  squared norm is the batch's largest (S = 1, the default, is theirs; S > 1 is stronger). It
  hides the norm, not the direction (a scalar factor keeps each gradient on its line).
* ``grad-noise:ratio=R`` -- their isotropic Gaussian baseline: N(0, (R * max_i ||g_i||)^2 / d)
  per coordinate (the "isotropic noise r" of their tables).
* ``marvell:scale=S`` -- Marvell, their optimised noise (binary tasks): per batch, the noise
  covariances of the positive and negative examples (a component along the difference of the
  two classes' mean gradients and an isotropic rest, four variances) minimise the symmetric
  KL divergence between the two perturbed gradient distributions, under the power constraint
  ``p * tr(S1) + (1 - p) * tr(S0) <= S * ||mean g1 - mean g0||^2`` (their "s"). Solved with
  SciPy's SLSQP rather than their alternating closed-form solver: the same problem, not the
  same code. Multi-class (our extension, not in the paper): each class present in the batch is
  solved one-vs-rest and its examples take that problem's positive-class noise.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from defences.base import OwnerDefence, Param, check_seed, defence_generator
from protocol.errors import ConfigError

_EPS = 1e-30


def _flat(g: torch.Tensor) -> torch.Tensor:
    return g.reshape(len(g), -1)


class _ScaledLabelNoise(OwnerDefence):
    """A label defence with a strength ``scale`` in (0, 1000] and its own seeded draws."""

    params = {"scale": Param("float"), "seed": Param("int")}
    random: ClassVar[bool] = True
    label_defence: ClassVar[bool] = True

    def __init__(self, scale: float = 1.0, seed: int = 0, stream: int | str = 0) -> None:
        flag = f"--defence {self.name}"
        if not 0 < scale <= 1e3:
            raise ConfigError(f"{flag}: scale must be in (0, 1000], got {scale}")
        self.scale = float(scale)
        self.gen = defence_generator(check_seed(flag, seed), stream, self.name)


class MaxNormNoise(_ScaledLabelNoise):
    name: ClassVar[str] = "max-norm"

    def gradient(self, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = _flat(g)
        norms = flat.norm(dim=1, keepdim=True)
        top = norms.max()
        sigma = torch.sqrt(torch.clamp(top ** 2 / (norms ** 2 + _EPS) - 1.0, min=0.0))
        xi = torch.randn((len(g), 1), generator=self.gen, dtype=flat.dtype)
        return (flat * (1 + self.scale * sigma * xi)).reshape(g.shape)


class GradientNoise(OwnerDefence):
    name: ClassVar[str] = "grad-noise"
    params = {"ratio": Param("float", required=True), "seed": Param("int")}
    random: ClassVar[bool] = True
    label_defence: ClassVar[bool] = True

    def __init__(self, ratio: float, seed: int = 0, stream: int | str = 0) -> None:
        if not 0 < ratio <= 1e3:
            raise ConfigError(f"--defence grad-noise: ratio must be in (0, 1000], got {ratio}")
        self.ratio = float(ratio)
        self.gen = defence_generator(check_seed("--defence grad-noise", seed), stream, self.name)

    def gradient(self, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = _flat(g)
        std = self.ratio * flat.norm(dim=1).max() / math.sqrt(flat.shape[1])
        noise = torch.randn(flat.shape, generator=self.gen, dtype=flat.dtype) * std
        return (flat + noise).reshape(g.shape)


def sym_kl(lam: np.ndarray, u: float, v: float, d: int, gap: float) -> float:
    """Li et al.'s objective (up to constants): the symmetric KL between the perturbed
    negatives N(0, u I + S0) and positives N(gap, v I + S1), with S_k = lam1_k along the gap,
    lam2_k across it. ``lam`` = (lam10, lam20, lam11, lam21)."""
    l10, l20, l11, l21 = lam
    return float((d - 1) * (l20 + u) / (l21 + v + _EPS) + (d - 1) * (l21 + v) / (l20 + u + _EPS)
                 + (l10 + u + gap) / (l11 + v + _EPS) + (l11 + v + gap) / (l10 + u + _EPS))


def solve_marvell(u: float, v: float, d: int, gap: float, p: float, power: float) -> np.ndarray:
    """The four noise variances minimising ``sym_kl`` under the power constraint."""
    from scipy.optimize import minimize  # here, not at import: every role imports defences

    budget = [(1 - p) * 1, (1 - p) * (d - 1), p * 1, p * (d - 1)]

    def spent(lam: np.ndarray) -> float:
        return float(power - np.dot(budget, lam))

    # Start feasible: half the power, split evenly by coordinate.
    start = np.full(4, 0.5 * power / max(d, 1))
    res = minimize(sym_kl, start, args=(u, v, d, gap), method="SLSQP",
                   bounds=[(0.0, None)] * 4,
                   constraints=[{"type": "ineq", "fun": spent}],
                   options={"maxiter": 100, "ftol": 1e-9})
    lam = np.clip(res.x if np.all(np.isfinite(res.x)) else start, 0.0, None)
    if spent(lam) < 0:  # numerically over budget: scale back onto the constraint
        lam *= power / max(float(np.dot(budget, lam)), _EPS)
    return lam


class MarvellNoise(_ScaledLabelNoise):
    name: ClassVar[str] = "marvell"

    def gradient(self, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = _flat(g).to(torch.float64)
        out = flat.clone()
        labels = y.numpy()
        present = np.unique(labels)
        if len(present) < 2:
            return g  # one class in the batch: nothing to tell apart
        # Binary: class 1 against class 0. Multi-class: each class against the rest.
        positives = [1] if set(present) <= {0, 1} else list(present)
        for c in positives:
            pos = torch.from_numpy(labels == c)
            noise_pos, noise_neg = self._noise(flat, pos)
            out[pos] += noise_pos
            if len(positives) == 1:  # binary: the negatives take their half of the solution
                out[~pos] += noise_neg
        return out.to(g.dtype).reshape(g.shape)

    def _noise(self, flat: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise for the positive rows and for the negative rows, from one solved problem."""
        g1, g0 = flat[pos], flat[~pos]
        gap_vec = g1.mean(0) - g0.mean(0)
        gap = float(gap_vec.pow(2).sum())
        d = flat.shape[1]
        if gap <= 0:
            return (torch.zeros((len(g1), d), dtype=flat.dtype),
                    torch.zeros((len(g0), d), dtype=flat.dtype))
        u = float(g0.var(0, unbiased=False).mean()) if len(g0) > 1 else 0.0
        v = float(g1.var(0, unbiased=False).mean()) if len(g1) > 1 else 0.0
        p = float(pos.double().mean())
        l10, l20, l11, l21 = solve_marvell(u, v, d, gap, p, self.scale * gap)
        unit = gap_vec / math.sqrt(gap)
        return self._draw(len(g1), unit, l11, l21), self._draw(len(g0), unit, l10, l20)

    def _draw(self, n: int, unit: torch.Tensor, along: float, across: float) -> torch.Tensor:
        """n draws of N(0, along * uu^T + across * (I - uu^T))."""
        eps = torch.randn((n, len(unit)), generator=self.gen, dtype=unit.dtype)
        proj = (eps @ unit)[:, None] * unit[None, :]
        return math.sqrt(across) * (eps - proj) + math.sqrt(along) * proj
