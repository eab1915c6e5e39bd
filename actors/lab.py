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

from actors.adversary import Reconstruction
from actors.backend import Backend
from actors.data import TargetData
from actors.eavesdropper import Eavesdropper
from actors.model import seeded_parts
from actors.owner import DataOwner, EpochReport, InferenceReport, TrainConfig
from actors.server import ComputeServer
from attack import metrics, validator
from protocol.endpoint import WireStats

SERVER = "server"
EAVESDROPPER = "eavesdropper"
#: Who attacks, and which role plays them. The eavesdropper holds only tapped bytes; the server
#: holds what it decrypted to compute on.
ADVERSARY_ROLES = {"eavesdropper": EAVESDROPPER, "server": SERVER}
ADVERSARIES = tuple(ADVERSARY_ROLES)


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
    adversaries: tuple[str, ...] = ("eavesdropper",)
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
    baseline: dict[str, float] = field(default_factory=dict)

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
            "baseline": self.baseline,
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
) -> list[RunResult]:
    """Train with ``cfg.clients`` owners, infer the private test set, attack it, score it.

    Training and inference happen once; each adversary in ``cfg.adversaries`` then attacks
    what it holds, giving one result per adversary.
    """
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
    # The trust registry: every party's public identity, pinned at every party (a no-op for
    # codecs without keys). Private keys were made inside each role and never leave it.
    names = [EAVESDROPPER, SERVER, *owners]
    registry = dict(zip(names, backend.call_all([(n, "identity", ()) for n in names]),
                        strict=True))
    backend.call_all([(n, "trust", (registry,)) for n in names])

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

    judge_model = judge()  # trained concurrently elsewhere; wait for it only now
    # What a guess that knows nothing scores: the mean training image for every test image.
    mean_guess = np.repeat(data.train.x.mean(0, keepdims=True), n_test, axis=0)
    baseline = score(mean_guess, data.test.x, data.test.y, judge_model).to_dict()
    # Every adversary attacks at once: they are different parties, each querying the oracle.
    attacks: list[list[Reconstruction]] = backend.call_all(
        [(ADVERSARY_ROLES[a], "attack", (owners, aux, cfg.attack_epochs, cfg.seed))
         for a in cfg.adversaries])
    seconds = time.perf_counter() - t0
    results = []
    for adversary, recons in zip(cfg.adversaries, attacks, strict=True):
        per_owner, all_recon = [], []
        for i, rec in enumerate(recons):
            te = shard(n_test, cfg.clients, i)
            x, y = data.test.x[te], data.test.y[te]
            if rec.images.shape != x.shape:
                raise RuntimeError(
                    f"{rec.owner}: {adversary} reconstructed {rec.images.shape[0]} images, "
                    f"owner sent {len(x)}: frames were lost")
            per_owner.append({"owner": rec.owner, "target_accuracy": infer[i].accuracy,
                              "attack": score(rec.images, x, y, judge_model).to_dict()})
            all_recon.append(rec.images)
        recon = np.concatenate(all_recon)
        results.append(RunResult(
            protocol=cfg.protocol, adversary=adversary, aux=cfg.aux, target_accuracy=target_acc,
            attack=score(recon, data.test.x, data.test.y, judge_model), wire=WireStats(),
            seconds=seconds, per_owner=per_owner,
            placement={}, reconstructions=recon, originals=data.test.x, labels=data.test.y,
            epoch_losses=losses, queries_used=recons[0].queries_used, baseline=baseline,
        ))
    # Counted once the attacks (whose oracle queries cross the wire too) are done.
    stats = sum(backend.call_all([(n, "wire_stats", ()) for n in names]), WireStats())
    placement = backend.placement()
    for r in results:
        r.wire, r.placement = stats, placement
    return results
