"""The lab's side of a malicious-server run: which roles to start, arming them, the curve.

Kept apart from actors/lab.py so the lab only calls in at four points (the server roles, the
adversary table, arming before training, the curve after). Nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from actors.backend import Backend, Method
from actors.data import TargetData
from actors.fsha_pilot import DEFAULT_PILOT, PILOTS, PilotChoice
from actors.malicious import (
    MALICIOUS,  # noqa: F401 - the lab reads it from here
    MALICIOUS_COLLUDING,
    MALICIOUS_SERVER,
    ColludingShareServer,
    CurvePoint,
    MaliciousServer,
    MaliciousShareServer,
)
from actors.mpc_roles import SERVER0, ShareServer
from actors.server import ComputeServer
from attack import metrics, validator
from protocol.errors import ConfigError


def malicious_kind(adversaries: tuple[str, ...]) -> str | None:
    """The malicious adversary this run plays, or None (every adversary honest). A malicious
    server changes the training itself, so it cannot share a run with honest adversaries."""
    bad = [a for a in adversaries if a in MALICIOUS]
    if not bad:
        return None
    if len(set(adversaries)) > 1:
        raise ConfigError(f"adversary {bad[0]} changes the training: run it on its own, not "
                          f"with {', '.join(a for a in adversaries if a != bad[0])}")
    return bad[0]


def one_server_class(adversaries: tuple[str, ...]) -> type[ComputeServer]:
    return MaliciousServer if malicious_kind(adversaries) == MALICIOUS_SERVER else ComputeServer


def share_server_classes(adversaries: tuple[str, ...]) -> tuple[type[ShareServer], ...]:
    kind = malicious_kind(adversaries)
    if kind == MALICIOUS_SERVER:
        return MaliciousShareServer, ShareServer
    if kind == MALICIOUS_COLLUDING:
        return ColludingShareServer, ColludingShareServer
    return ShareServer, ShareServer


def malicious_adversaries(adversaries: tuple[str, ...], mpc: bool,
                          server: str) -> dict[str, tuple[str, Method]]:
    """The adversary table's malicious rows: who attacks, with which method."""
    kind = malicious_kind(adversaries)
    if kind is None or (kind == MALICIOUS_COLLUDING and not mpc):
        return {}
    cls = (ColludingShareServer if kind == MALICIOUS_COLLUDING
           else MaliciousShareServer if mpc else MaliciousServer)
    return {kind: (server, cls.attack_with)}


def arm(backend: Backend, adversaries: tuple[str, ...], servers: list[str], aux: np.ndarray,
        seed: int, total_steps: int, settings: dict[str, Any] | None = None,
        pilot: PilotChoice = PILOTS[DEFAULT_PILOT]) -> Callable[[], None] | None:
    """Hand the malicious server its public data, the FSHA it runs (``pilot``: the
    ``--fsha-pilot`` choice) and any ``settings`` over the lab's before the owner's first
    batch. Returns what re-arms a rebuilt server (``--chaos``) before
    its checkpoint is restored: the same arming without the warm-up, whose result the
    checkpoint holds; None for an honest run."""
    if malicious_kind(adversaries) is None:
        return None
    leader = SERVER0 if SERVER0 in servers else servers[0]
    public = np.ascontiguousarray(aux)
    backend.call(leader, MaliciousServer.arm, public, seed, total_steps, settings, pilot.name)

    def rearm() -> None:
        backend.call(leader, MaliciousServer.arm, public, seed, total_steps,
                     (settings or {}) | {"warmup": 0}, pilot.name)

    return rearm


def batch_order(seed: int, owner: str, epoch: int, n: int) -> torch.Tensor:
    """The permutation of an owner's shard in ``epoch``: DataOwner.train_chunk's, which is a
    function of (seed, owner, epoch) alone (so a retried chunk trains the same batches)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 65_537
                                        + sum(owner.encode()))
    return torch.randperm(n, generator=gen)


def score_curve(backend: Backend, adversaries: tuple[str, ...], servers: list[str],
                data: TargetData, shard: np.ndarray, seed: int, batch_size: int,
                judge: torch.nn.Module) -> list[dict[str, Any]]:
    """The attack over training: each curve point's reconstruction of the batch the server had
    just received, scored against that batch's true images (one owner: global step s is its
    batch s mod n_batches of epoch s div n_batches)."""
    if malicious_kind(adversaries) is None:
        return []
    leader = SERVER0 if SERVER0 in servers else servers[0]
    points: list[CurvePoint] = backend.call(leader, MaliciousServer.attack_curve)
    x_shard, y_shard = data.train.x[shard], data.train.y[shard]
    n_batches = -(-len(shard) // batch_size)
    out = []
    for point in points:
        epoch, j = divmod(point.step, n_batches)
        idx = batch_order(seed, "owner:0", epoch, len(shard))[j * batch_size:
                                                              (j + 1) * batch_size].numpy()
        x, y = x_shard[idx], y_shard[idx]
        if x.shape != point.images.shape:
            raise RuntimeError(f"curve point at step {point.step}: {point.images.shape} "
                               f"reconstructions for a batch of {x.shape}")
        out.append({"step": point.step + 1, "mse": metrics.mse(point.images, x),
                    "ssim": metrics.ssim(point.images, x),
                    "validator_accuracy": validator.accuracy(judge, point.images, y)})
    return out
