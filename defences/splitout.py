"""SplitOut: outlier detection on the gradients the owner receives, against a local simulation.

Erdoğan, Tekşen, Çeliktenyıldız, Küpçü & Çiçek, "SplitOut: Out-of-the-Box Training-Hijacking
Detection in Split Learning via Outlier Detection" (CANS 2024). Before its first real step the
owner trains the *whole* network locally (its first part and a fresh copy of the server part,
the run's initial weights, its own optimiser settings and its own other defences) for ``steps``
steps on a small ``fraction`` of its private shard, and keeps the cut-layer gradient of each
step: what an honest server would have sent. An off-the-shelf novelty detector is fitted on
them (scikit-learn's LocalOutlierFactor by default, as in the paper; IsolationForest with
``model=iforest``). Then each of the first ``checks`` real gradients is classified, and the
server is judged malicious when at least ``ratio`` of the last ``window`` of them are outliers
(the paper's window rule). Checking stops after ``checks`` steps: the simulation describes early
training only, and the paper detects within the first epoch.

A gradient's features (:func:`gradient_features`) are three scale-free summaries of the batch's
cut-layer gradient, standardised on the simulation: the log mean per-example norm, the log norm
of the batch mean, and the mean pairwise cosine between the examples' gradients. (Raw flattened
gradients, tried first, gave a 5-30% outlier rate on honest runs here and missed a third of
FSHA's steps: a small simulation overfits, and its late gradients crowd LOF's neighbourhoods.)

Parameters (``--defence splitout:key=value,...``; all optional):

=========== ======= ===========================================================================
key         default meaning
=========== ======= ===========================================================================
fraction    0.05    share of the owner's shard simulated on (at least 8 batches, at most all)
steps       60      simulated training steps (the honest gradients the detector is fitted on)
checks      0       real steps to check; 0: as many as ``steps``
model       lof     the novelty detector: ``lof`` (LocalOutlierFactor) or ``iforest``
neighbors   20      LocalOutlierFactor's ``n_neighbors``
window      5       real gradients in the decision window
ratio       0.8     judged malicious when this share of the window are outliers
seed        0       seed of the simulation's data sample and order
=========== ======= ===========================================================================
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

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

_FLAG = "--defence splitout"
#: The simulation's sample holds at least this many batches (or the whole shard).
MIN_BATCHES = 8


def gradient_features(grad: np.ndarray) -> np.ndarray:
    """The detector's features of one cut-layer gradient (N, *cut), scale-free summaries:
    log10 of the mean per-example norm, log10 of the norm of the batch mean, and the mean
    cosine between the examples' gradients (how much the server pushes every example the same
    way, whatever its label)."""
    g = np.asarray(grad, np.float64).reshape(len(grad), -1)
    norms = np.linalg.norm(g, axis=1)
    unit = g / np.maximum(norms, 1e-30)[:, None]
    n = len(g)
    total = unit.sum(axis=0)
    # mean over pairs i != j of cos(g_i, g_j), from |sum of unit vectors|^2 in O(N d)
    alignment = (float(total @ total) - n) / (n * (n - 1)) if n > 1 else 1.0
    return np.array([np.log10(max(float(norms.mean()), 1e-30)),
                     np.log10(max(float(np.linalg.norm(g.mean(axis=0))), 1e-30)),
                     alignment])


class SplitOut(ServerCheck):
    """``--defence splitout``: LOF on received gradients vs a local simulation (see module)."""

    name: ClassVar[str] = "splitout"
    random: ClassVar[bool] = True
    params: ClassVar[dict[str, Param]] = {
        "fraction": Param("float"), "steps": Param("int"), "checks": Param("int"),
        "model": Param("choice", choices=("lof", "iforest")), "neighbors": Param("int"),
        "window": Param("int"), "ratio": Param("float"), "seed": Param("int"),
    }

    def __init__(self, fraction: float = 0.05, steps: int = 60, checks: int = 0,
                 model: str = "lof", neighbors: int = 20, window: int = 5, ratio: float = 0.8,
                 seed: int = 0, stream: int | str = 0) -> None:
        for key, value in (("fraction", fraction), ("ratio", ratio)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or not 0 < value <= 1):
                raise ConfigError(f"{_FLAG}: {key} must be in (0, 1], got {value!r}")
        for key, value, low in (("steps", steps, 2), ("checks", checks, 0),
                                ("neighbors", neighbors, 1), ("window", window, 1),
                                ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{_FLAG}: {key} must be an integer >= {low}, got {value!r}")
        if model not in ("lof", "iforest"):
            raise ConfigError(f"{_FLAG}: model must be lof or iforest, got {model!r}")
        self.fraction, self.steps, self.model_name = float(fraction), steps, model
        self.checks = checks or steps
        self.neighbors, self.window, self.ratio, self.seed = neighbors, window, float(ratio), seed
        self.gen = defence_generator(seed, stream, self.name)
        self.context: OwnerContext | None = None
        self.others: list[Any] = []  # the owner's other defences, copied for the simulation
        self.detector: Any = None
        self.centre = self.scale = np.zeros(3)
        self.checked = 0
        self.history: list[tuple[int, bool]] = []  # (step, outlier?) of every checked gradient
        self.honest: np.ndarray | None = None  # the simulation's features (standardised)
        self.flags: deque[bool] = deque(maxlen=window)
        self.simulation_seconds = 0.0

    def bind(self, context: OwnerContext) -> None:
        self.context = context
        # Copies: the simulation must not draw from the owner's own noise and dropout streams.
        self.others = [copy.deepcopy(m) for m in context.others]

    # --- the local simulation --------------------------------------------------------------
    def simulate(self) -> np.ndarray:
        """Honest gradients' features, one row per simulated step (see the module)."""
        ctx = self.context
        if ctx is None:
            raise ConfigError(f"{_FLAG}: the owner never described itself (bind)")
        n = len(ctx.train_x)
        size = min(ctx.batch_size, n)
        # At least MIN_BATCHES distinct batches: one batch trained over and over is memorised
        # within a few steps, and its gradients then say nothing about honest training.
        keep = min(n, max(MIN_BATCHES * size, math.ceil(self.fraction * n)))
        pick = torch.randperm(n, generator=self.gen)[:keep]
        xs, ys = ctx.train_x[pick], ctx.train_y[pick]
        owner, server = ctx.net.owner_part().train(), ctx.net.server_part().train()
        opt = torch.optim.SGD([*owner.parameters(), *server.parameters()], lr=ctx.lr,
                              momentum=ctx.momentum)
        rows: list[np.ndarray] = []
        order = torch.randperm(keep, generator=self.gen)
        at = 0
        for _ in range(self.steps):
            if at + size > keep:
                order, at = torch.randperm(keep, generator=self.gen), 0
            idx = order[at:at + size]
            at += size
            x, y = xs[idx], ys[idx]
            opt.zero_grad()
            h = owner(x)
            sent = h
            for member in self.others:
                sent = member.transform(sent)
            cut = sent.detach().requires_grad_(True)
            F.cross_entropy(server(cut), y).backward()
            assert cut.grad is not None
            rows.append(gradient_features(cut.grad.numpy()))
            outputs, grads = [sent], [cut.grad]
            for member in self.others:
                term = member.penalty(x, h)
                if term is not None and term.requires_grad:
                    outputs.append(term)
                    grads.append(torch.ones_like(term))
            torch.autograd.backward(outputs, grads)
            opt.step()
        return np.stack(rows)

    def _fit(self) -> None:
        import time

        t0 = time.perf_counter()
        honest = self.simulate()
        # Standardised on the honest simulation, so no feature dominates the distances.
        self.centre, self.scale = honest.mean(axis=0), honest.std(axis=0) + 1e-9
        self._fit_detector((honest - self.centre) / self.scale)
        self.simulation_seconds = time.perf_counter() - t0

    def _fit_detector(self, honest: np.ndarray) -> None:
        """The novelty detector on the standardised honest features (deterministic: a
        checkpoint keeps the features and refits the same detector from them)."""
        from sklearn.ensemble import IsolationForest
        from sklearn.neighbors import LocalOutlierFactor

        self.honest = honest
        if self.model_name == "lof":
            self.detector = LocalOutlierFactor(
                n_neighbors=min(self.neighbors, len(honest) - 1), novelty=True).fit(honest)
        else:
            self.detector = IsolationForest(random_state=self.seed).fit(honest)

    # --- the check ---------------------------------------------------------------------------
    def observe_gradient(self, obs: Observation) -> Verdict | None:
        if obs.fake or self.checked >= self.checks:
            return None
        if self.detector is None:
            self._fit()
        self.checked += 1
        features = ((gradient_features(obs.grad) - self.centre) / self.scale)[None, :]
        outlier = bool(self.detector.predict(features)[0] == -1)
        self.flags.append(outlier)
        self.history.append((obs.step, outlier))
        share = sum(self.flags) / len(self.flags)
        if len(self.flags) < self.window or share < self.ratio:
            return None
        return Verdict(self.name, obs.step, share,
                       f"{sum(self.flags)} of the last {self.window} gradients are outliers "
                       f"(>= {self.ratio}) against {self.steps} simulated honest steps "
                       f"({self.model_name})")

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The generator, the reference model (the simulation's standardised features, from
        which the detector is refitted as it was: no simulation runs again), the count of
        checked steps, the window and the history. Before the first check: no features."""
        honest = np.zeros((0, 3)) if self.honest is None else self.honest
        return {"gen": generator_state(self.gen), "checked": np.array(self.checked, np.int64),
                "honest": np.array(honest, np.float64), "centre": np.array(self.centre),
                "scale": np.array(self.scale), "flags": np.array(self.flags, bool),
                "history.step": np.array([s for s, _ in self.history], np.int64),
                "history.outlier": np.array([o for _, o in self.history], bool),
                "simulation_seconds": np.array(self.simulation_seconds, np.float64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        set_generator_state(self.gen, state_array(state, "gen", _FLAG, "u"), _FLAG)
        checked = int(state_array(state, "checked", _FLAG, "i", ndim=0))
        honest = state_array(state, "honest", _FLAG, "f", ndim=2)
        centre = state_array(state, "centre", _FLAG, "f", ndim=1)
        scale = state_array(state, "scale", _FLAG, "f", ndim=1)
        flags = state_array(state, "flags", _FLAG, "b", ndim=1)
        steps = state_array(state, "history.step", _FLAG, "i", ndim=1)
        outliers = state_array(state, "history.outlier", _FLAG, "b", ndim=1)
        if (honest.shape[1] != 3 or centre.shape != (3,) or scale.shape != (3,)
                or not 0 <= checked <= self.checks or len(flags) > self.window
                or len(steps) != len(outliers) or (checked > 0 and len(honest) < 2)):
            raise ConfigError(f"{_FLAG}: inconsistent checkpointed state ({checked} checks, "
                              f"{honest.shape} features, {len(flags)} flags, {len(steps)} "
                              f"history steps)")
        self.checked, self.centre, self.scale = checked, centre, scale
        self.detector = self.honest = None
        if len(honest):
            self._fit_detector(honest)
        self.flags = deque((bool(f) for f in flags), maxlen=self.window)
        self.history = [(int(s), bool(o)) for s, o in zip(steps, outliers, strict=True)]
        self.simulation_seconds = float(state_array(state, "simulation_seconds", _FLAG, "f"))

    def __repr__(self) -> str:
        return (f"SplitOut(fraction={self.fraction}, steps={self.steps}, checks={self.checks}, "
                f"model={self.model_name}, window={self.window}, ratio={self.ratio})")
