"""One protocol run, start to finish, on any backend: train, infer, attack, measure.

The lab is the only party that knows the ground truth (the owners' private test images); it uses
them solely to score what the adversary reconstructed. Nothing here imports Ray.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actors.backend import Backend
from actors.data import TargetData
from actors.eavesdropper import Eavesdropper, Reconstruction
from actors.model import seeded_parts
from actors.owner import DataOwner, EpochReport, InferenceReport, TrainConfig
from actors.server import ComputeServer
from attack import metrics, validator
from protocol.endpoint import WireStats

SERVER = "server"
EAVESDROPPER = "eavesdropper"


def owner_name(i: int) -> str:
    return f"owner:{i}"


@dataclass(frozen=True)
class RunConfig:
    protocol: str = "plaintext"
    aux: str = "letters"
    epochs: int = 10
    attack_epochs: int = 30
    clients: int = 1
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class RunResult:
    protocol: str
    adversary: str
    aux: str
    target_accuracy: float
    attack: metrics.AttackMetrics
    wire: WireStats
    seconds: float
    per_owner: list[dict[str, Any]]
    placement: dict[str, str]
    reconstructions: np.ndarray  # (N, 784), aligned with the lab's test images
    originals: np.ndarray
    labels: np.ndarray
    epoch_losses: list[float]
    queries_used: int

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "adversary": self.adversary,
            "aux": self.aux,
            "target_accuracy": self.target_accuracy,
            "attack": self.attack.to_dict(),
            "wire": {"frames": self.wire.frames, "bytes": self.wire.bytes,
                     "dropped": dict(self.wire.dropped), "links": self.wire.to_dict()["links"]},
            "seconds": self.seconds,
            "owners": len(self.per_owner),
            "per_owner": self.per_owner,
            "placement": self.placement,
            "epoch_losses": self.epoch_losses,
            "queries_used": self.queries_used,
        }


def shard(n: int, parts: int, i: int) -> slice:
    """Contiguous near-equal slices of an already shuffled split."""
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return slice(int(bounds[i]), int(bounds[i + 1]))


def score(recon: np.ndarray, x: np.ndarray, y: np.ndarray,
          judge: torch.nn.Module) -> metrics.AttackMetrics:
    return metrics.AttackMetrics(
        mse=metrics.mse(recon, x), psnr=metrics.psnr(recon, x), ssim=metrics.ssim(recon, x),
        validator_accuracy=validator.accuracy(judge, recon, y),
    )


def run_protocol(
    backend: Backend,
    cfg: RunConfig,
    data: TargetData,
    aux: np.ndarray,
    judge: Callable[[], torch.nn.Module],
    progress: Any = None,
) -> RunResult:
    """Train with ``cfg.clients`` owners, infer the private test set, attack it, score it."""
    t0 = time.perf_counter()
    session = secrets.randbits(64)  # fresh per run: frames of one run are refused by another
    owners = [owner_name(i) for i in range(cfg.clients)]
    first, second = seeded_parts(cfg.seed)  # every protocol starts from the same weights
    taps = [EAVESDROPPER]
    common = {"codec": cfg.protocol, "session": session}

    backend.start(EAVESDROPPER, Eavesdropper, taps, **common)
    backend.start(SERVER, ComputeServer, taps, model=second, config=cfg.train, **common)
    n_train, n_test = len(data.train.y), len(data.test.y)
    for i, name in enumerate(owners):
        tr, te = shard(n_train, cfg.clients, i), shard(n_test, cfg.clients, i)
        backend.start(
            name, DataOwner, taps, server=SERVER, model=copy.deepcopy(first), config=cfg.train,
            train=(data.train.x[tr], data.train.y[tr]), test=(data.test.x[te], data.test.y[te]),
            **common,
        )
    backend.connect()

    # Vanilla split learning: the first part travels owner to owner, round-robin, each epoch.
    losses: list[float] = []
    for _ in range(cfg.epochs):
        reports: list[EpochReport] = []
        for i, name in enumerate(owners):
            if i > 0:
                backend.call(owners[i - 1], "hand_off", name)
            reports.append(backend.call(name, "train_epoch"))
        if len(owners) > 1:  # the next epoch starts where the last owner stopped
            backend.call(owners[-1], "hand_off", owners[0])
        losses.append(float(np.mean([r.mean_loss for r in reports])))
        if progress is not None:
            progress.update(1)
    for name in owners[1:]:
        backend.call(owners[0], "hand_off", name)  # everyone deploys the final first part

    infer: list[InferenceReport] = backend.call_all([(n, "infer", ()) for n in owners])
    target_acc = sum(r.correct for r in infer) / sum(r.examples for r in infer)

    recons: list[Reconstruction] = backend.call(
        EAVESDROPPER, "attack", owners, aux, epochs=cfg.attack_epochs, seed=cfg.seed
    )
    judge_model = judge()  # trained concurrently elsewhere; wait for it only now
    per_owner, all_recon = [], []
    for i, rec in enumerate(recons):
        te = shard(n_test, cfg.clients, i)
        x, y = data.test.x[te], data.test.y[te]
        if rec.images.shape != x.shape:
            raise RuntimeError(
                f"{rec.owner}: adversary reconstructed {rec.images.shape[0]} images, "
                f"owner sent {len(x)}: frames were lost"
            )
        m = score(rec.images, x, y, judge_model)
        per_owner.append({"owner": rec.owner, "target_accuracy": infer[i].accuracy,
                          "attack": m.to_dict()})
        all_recon.append(rec.images)
    recon = np.concatenate(all_recon)
    stats = sum(backend.call_all([(n, "wire_stats", ()) for n in [SERVER, EAVESDROPPER, *owners]]),
                WireStats())
    return RunResult(
        protocol=cfg.protocol, adversary="eavesdropper", aux=cfg.aux,
        target_accuracy=target_acc, attack=score(recon, data.test.x, data.test.y, judge_model),
        wire=stats, seconds=time.perf_counter() - t0, per_owner=per_owner,
        placement=backend.placement(), reconstructions=recon, originals=data.test.x,
        labels=data.test.y, epoch_losses=losses, queries_used=recons[0].queries_used,
    )
