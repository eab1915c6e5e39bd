"""Defences beyond cryptography, applied by the data owner to what it sends and trains.

Encryption hides the cut-layer activations from the wire but not from the server that must
compute on them; these defences limit what the activations themselves reveal. Each acts on a
cut of any shape (N, *cut_shape):

* ``noise``   -- clip each example's activation and add Laplace or Gaussian noise, with the
  per-query (epsilon, delta) that implies (:mod:`defences.noise`);
* ``nopeek``  -- a distance-correlation penalty on the owner's loss (:mod:`defences.nopeek`);
* ``dropout`` -- cut-layer dropout that stays on at inference (:mod:`defences.dropout`);
* ``query-budget``  -- a per-party cap on answered queries (:mod:`defences.query_budget`);
* ``splitguard`` -- the owner probes its server with fake-label batches and stops training when
  the gradients ignore the labels (:mod:`defences.splitguard`);
* ``splitout`` -- the owner fits an outlier detector on a local simulation of honest training
  and stops training when the server's gradients are outliers (:mod:`defences.splitout`).

Each is an :class:`OwnerDefence` (:mod:`defences.base`) listed in the registry
(:mod:`defences.registry`). They are chosen with the repeatable ``--defence NAME:key=value,...``
flag, parsed once by :func:`parse_defence` and composed for one owner (its own random stream)
by :func:`build_defences` (:mod:`defences.spec`).
"""

from __future__ import annotations

from defences.base import (
    Observation,
    OwnerContext,
    OwnerDefence,
    Param,
    QueryBudgetExceeded,
    QueryGate,
    ServerCheck,
    ServerJudgedMalicious,
    Verdict,
    defence_generator,
    derive_seed,
)
from defences.dropout import CutLayerDropout
from defences.noise import (
    MECHANISMS,
    CutLayerNoise,
    analytic_gaussian_epsilon,
    classic_gaussian_epsilon,
    clip_rows,
    gaussian_delta,
    laplace_epsilon,
)
from defences.nopeek import NoPeek, distance_correlation
from defences.query_budget import QueryBudget
from defences.registry import DEFENCES, PARAMETERS, register_defence, unregister_defence
from defences.spec import Defences, DefenceSpec, build_defences, parse_defence
from defences.splitguard import SplitGuard
from defences.splitout import SplitOut

__all__ = [
    "DEFENCES",
    "MECHANISMS",
    "PARAMETERS",
    "CutLayerDropout",
    "CutLayerNoise",
    "DefenceSpec",
    "Defences",
    "NoPeek",
    "Observation",
    "OwnerContext",
    "OwnerDefence",
    "Param",
    "QueryBudget",
    "QueryBudgetExceeded",
    "QueryGate",
    "ServerCheck",
    "ServerJudgedMalicious",
    "SplitGuard",
    "SplitOut",
    "Verdict",
    "analytic_gaussian_epsilon",
    "build_defences",
    "classic_gaussian_epsilon",
    "clip_rows",
    "defence_generator",
    "derive_seed",
    "distance_correlation",
    "gaussian_delta",
    "laplace_epsilon",
    "parse_defence",
    "register_defence",
    "unregister_defence",
]
