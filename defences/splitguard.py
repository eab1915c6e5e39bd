"""SplitGuard: the owner probes its server with fake batches and compares the gradients.

Erdoğan, Küpçü & Çiçek, "SplitGuard: Detecting and Mitigating Training-Hijacking Attacks in
Split Learning" (WPES 2022). After ``start`` batches, each batch becomes a *fake* batch with
probability ``p``: its labels are shifted by a random ``1..classes-2`` (mod classes, so every
label is wrong) and the owner does not update its part with what comes back. An honest server
computes the task's loss, so a fake batch's gradient points elsewhere than a regular one's and is
larger (wrong labels, high loss). A training-hijacking server (FSHA) ignores the labels: fake and
regular gradients come from one distribution.

The gradient compared is the owner's *parameter* gradient (its first part's weights, flattened)
that the received cut-layer gradient induces: one fixed-size vector per batch, whatever the
batch's size. Regular batches after ``start`` go at random to one of two sets R1, R2; the fakes
form F. With means ``F̄, R̄, R̄1, R̄2`` of the vectors, mean norms ``|F|, |R|, |R1|, |R2|`` and
``θ`` the angle between two means (radians), the score is the paper's (its equation 6, as
SecretFlow's implementation writes it)::

    m = abs(|F| - |R|) + abs(|R1| - |R2|)
    S = θ(F̄, R̄) · abs(|F| - |R|) / m  -  θ(R̄1, R̄2) · abs(|R1| - |R2|) / m
    SG = sigmoid(alpha · S) ** beta

An honest server scores near 1 (d(F, R) >> d(R1, R2)), a hijacking one near
``sigmoid(0) ** beta``. One score is computed after each fake batch once R1 and R2 are both
non-empty; the server is judged malicious when the mean of the last ``window`` scores falls
below ``threshold``.

Parameters (``--defence splitguard:key=value,...``; all optional):

========== ======= ============================================================================
key        default meaning
========== ======= ============================================================================
p          0.1     probability that a batch after ``start`` is a fake batch (authors' default)
start      20      batches the owner trains before probing and scoring (authors' default)
alpha      5.0     slope of the squashing sigmoid on S
beta       2.0     exponent of the squashed score
threshold  0.6     judged malicious when the window's mean SG score is below this
window     3       scores averaged for the decision (and needed before any decision)
seed       0       seed of the owner's fake-batch draws (each owner its own stream)
========== ======= ============================================================================
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch

from defences.base import (
    Observation,
    OwnerContext,
    Param,
    ServerCheck,
    Verdict,
    defence_generator,
    generator_state,
    set_generator_state,
    state_array,
)
from protocol.errors import ConfigError

_FLAG = "--defence splitguard"


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two vectors in radians (0 when either is zero)."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0
    cos = float(torch.dot(a, b)) / (na * nb)
    return math.acos(max(-1.0, min(1.0, cos)))


class _GradientSet:
    """Running sum of vectors and of their norms: the set's mean and mean norm in O(d)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.norms = 0.0
        self.n = 0

    def add(self, v: torch.Tensor) -> None:
        self.total = v.clone() if self.total is None else self.total + v
        self.norms += float(v.norm())
        self.n += 1

    @property
    def mean(self) -> torch.Tensor:
        assert self.total is not None
        return self.total / self.n

    @property
    def mean_norm(self) -> float:
        return self.norms / self.n

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        total = (np.zeros(0, np.float32) if self.total is None
                 else self.total.numpy().copy())
        return {f"{prefix}.total": total, f"{prefix}.norms": np.array(self.norms, np.float64),
                f"{prefix}.n": np.array(self.n, np.int64)}

    def load(self, state: Mapping[str, np.ndarray], prefix: str) -> None:
        total = state_array(state, f"{prefix}.total", _FLAG, "f", ndim=1)
        n = int(state_array(state, f"{prefix}.n", _FLAG, "i", ndim=0))
        if n < 0 or (n == 0) != (total.size == 0):
            raise ConfigError(f"{_FLAG}: checkpointed set {prefix} holds {n} gradients and a "
                              f"sum of {total.size} numbers")
        self.total = None if n == 0 else torch.from_numpy(total.astype(np.float32))
        self.norms = float(state_array(state, f"{prefix}.norms", _FLAG, "f", ndim=0))
        self.n = n

    def merged(self, other: _GradientSet) -> _GradientSet:
        out = _GradientSet()
        assert self.total is not None and other.total is not None
        out.total, out.norms, out.n = self.total + other.total, self.norms + other.norms, \
            self.n + other.n
        return out


def splitguard_score(fakes: _GradientSet, r1: _GradientSet, r2: _GradientSet, alpha: float,
                     beta: float) -> tuple[float, float]:
    """``(SG, S)`` for the sets seen so far (the module's formula)."""
    regular = r1.merged(r2)
    d_fr = abs(fakes.mean_norm - regular.mean_norm)
    d_rr = abs(r1.mean_norm - r2.mean_norm)
    m = d_fr + d_rr
    if m == 0.0:
        s = 0.0
    else:
        s = (_angle(fakes.mean, regular.mean) * d_fr - _angle(r1.mean, r2.mean) * d_rr) / m
    return (1.0 / (1.0 + math.exp(-alpha * s))) ** beta, s


def parameter_gradient(obs: Observation) -> torch.Tensor:
    """The owner's first-part parameter gradient that the received cut gradient induces."""
    params = [p for p in obs.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(obs.h, params, torch.from_numpy(obs.grad).to(obs.h.dtype),
                                retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)]).detach()


class SplitGuard(ServerCheck):
    """``--defence splitguard``: fake batches and the SplitGuard score (see the module)."""

    name: ClassVar[str] = "splitguard"
    random: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        "p": Param("float"), "start": Param("int"), "alpha": Param("float"),
        "beta": Param("float"), "threshold": Param("float"), "window": Param("int"),
        "seed": Param("int"),
    }

    def __init__(self, p: float = 0.1, start: int = 20, alpha: float = 5.0, beta: float = 2.0,
                 threshold: float = 0.6, window: int = 3, seed: int = 0,
                 stream: int | str = 0) -> None:
        _check_number("p", p, 0.0, 1.0, open_low=True)
        _check_number("threshold", threshold, 0.0, 1.0)
        _check_number("alpha", alpha, 0.0, math.inf, open_low=True)
        _check_number("beta", beta, 0.0, math.inf, open_low=True)
        _check_int("start", start, 0)
        _check_int("window", window, 1)
        _check_int("seed", seed, 0)
        self.p, self.start, self.alpha, self.beta = float(p), start, float(alpha), float(beta)
        self.threshold, self.window, self.seed = float(threshold), window, seed
        self.gen = defence_generator(seed, stream, self.name)
        self.classes = 0
        self.batches = 0  # batches this owner has trained (its own count, not the global id)
        self.fakes, self.r1, self.r2 = _GradientSet(), _GradientSet(), _GradientSet()
        self.scores: deque[float] = deque(maxlen=window)
        self.history: list[tuple[int, float]] = []  # (step, SG) after every fake batch

    def bind(self, context: OwnerContext) -> None:
        self.classes = int(context.net.classes)
        if self.classes < 3:
            raise ConfigError(f"{_FLAG} needs at least 3 classes (labels shifted by "
                              f"1..classes-2), the network has {self.classes}")

    def fake_labels(self, step: int, y: torch.Tensor) -> torch.Tensor | None:
        if self.batches < self.start or float(torch.rand((), generator=self.gen)) >= self.p:
            return None
        classes = self.classes or int(y.max()) + 1
        shift = torch.randint(1, max(classes - 1, 2), y.shape, generator=self.gen)
        return (y + shift.to(y.dtype)) % classes

    def observe_gradient(self, obs: Observation) -> Verdict | None:
        self.batches += 1
        if self.batches <= self.start and not obs.fake:
            return None
        v = parameter_gradient(obs)
        if not obs.fake:
            (self.r1 if float(torch.rand((), generator=self.gen)) < 0.5 else self.r2).add(v)
            return None
        self.fakes.add(v)
        if self.r1.n == 0 or self.r2.n == 0:
            return None
        sg, s = splitguard_score(self.fakes, self.r1, self.r2, self.alpha, self.beta)
        self.scores.append(sg)
        self.history.append((obs.step, sg))
        mean = sum(self.scores) / len(self.scores)
        if len(self.scores) < self.window or mean >= self.threshold:
            return None
        return Verdict(self.name, obs.step, mean,
                       f"mean SplitGuard score {mean:.3f} of the last {self.window} fake "
                       f"batches is below {self.threshold} (S={s:.3f}; fake-batch gradients "
                       f"look like regular ones: the server ignores the labels)")

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The fake-batch generator, the batch count, the three gradient sets (sums, norms,
        counts), the decision window and the score history: all SplitGuard knows."""
        steps = np.array([s for s, _ in self.history], np.int64)
        return {"gen": generator_state(self.gen), "batches": np.array(self.batches, np.int64),
                **self.fakes.state("fakes"), **self.r1.state("r1"), **self.r2.state("r2"),
                "scores": np.array(self.scores, np.float64),
                "history.step": steps,
                "history.score": np.array([g for _, g in self.history], np.float64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        set_generator_state(self.gen, state_array(state, "gen", _FLAG, "u"), _FLAG)
        batches = int(state_array(state, "batches", _FLAG, "i", ndim=0))
        scores = state_array(state, "scores", _FLAG, "f", ndim=1)
        steps = state_array(state, "history.step", _FLAG, "i", ndim=1)
        values = state_array(state, "history.score", _FLAG, "f", ndim=1)
        if batches < 0 or len(scores) > self.window or len(steps) != len(values):
            raise ConfigError(f"{_FLAG}: inconsistent checkpointed state ({batches} batches, "
                              f"{len(scores)} scores for a window of {self.window}, "
                              f"{len(steps)} history steps and {len(values)} scores)")
        for gradients, prefix in ((self.fakes, "fakes"), (self.r1, "r1"), (self.r2, "r2")):
            gradients.load(state, prefix)
        self.batches = batches
        self.scores = deque((float(v) for v in scores), maxlen=self.window)
        self.history = [(int(s), float(v)) for s, v in zip(steps, values, strict=True)]

    def __repr__(self) -> str:
        return (f"SplitGuard(p={self.p}, start={self.start}, alpha={self.alpha}, "
                f"beta={self.beta}, threshold={self.threshold}, window={self.window})")


def _check_number(key: str, value: object, low: float, high: float,
                  open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            float(value)) or value < low or value > high or (open_low and value == low):
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise ConfigError(f"{_FLAG}: {key} must be a number in {bound}, got {value!r}")


def _check_int(key: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{_FLAG}: {key} must be an integer >= {low}, got {value!r}")
