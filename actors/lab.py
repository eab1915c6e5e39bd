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
from actors.mpc_roles import DEALER, SERVER0, SERVER1, Dealer, ShareServer, SharingOwner
from actors.owner import DataOwner, EpochReport, InferenceReport, TrainConfig
from actors.server import ComputeServer
from actors.wire import Tap, link
from attack import metrics, validator
from attack.ladder import needs_weights
from defences.spec import build_defences, parse_defence
from protocol import ring
from protocol.codecs import get_codec
from protocol.endpoint import WireStats
from protocol.frame import MessageKind

SERVER = "server"
EAVESDROPPER = "eavesdropper"
#: Who may attack. The eavesdropper holds only tapped bytes; the server what it decrypted to
#: compute on (under sharing: server 0's shares); colluding servers pool both servers' shares.
ADVERSARIES = ("eavesdropper", "server", "colluding-servers")
INFER_BATCH = 250
#: Frames the eavesdropper always keeps whole (its attack inverts them), whatever its snaplen.
FULL_KINDS = frozenset({MessageKind.INFER_ACTIVATIONS, MessageKind.INFER_SHARE})


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
    frac_bits: int = ring.DEFAULT_FRAC_BITS
    reveal_model: bool = False
    tap: str = "all"  # the eavesdropper's taps under secret sharing: "one" link or "all"
    channel_encryption: bool = True  # secret-shared only: shares over encrypted links?
    snaplen: int = 512  # bytes the eavesdropper keeps of big training frames (0: all)
    defences: tuple[str, ...] = ()  # the owners' --defence specs, canonical text
    attacks: tuple[str, ...] = ("mlp",)  # rungs of the attack ladder each adversary runs

    @property
    def codec(self) -> str:
        """The codec on the wire: the protocol's, or its plaintext-links variant."""
        if get_codec(self.protocol).topology == "mpc" and not self.channel_encryption:
            return "secret-shared/plaintext-links"
        return self.protocol
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
    mpc: dict[str, Any] | None = None
    attack_method: str = "mlp"
    defences: list[str] = field(default_factory=list)
    epsilon: tuple[float, float] | None = None

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
            "attack_method": self.attack_method,
            "defences": self.defences,
            "epsilon": (None if self.epsilon is None
                        else {"epsilon": self.epsilon[0], "delta": self.epsilon[1]}),
            **({"mpc": self.mpc} if self.mpc else {}),
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


@dataclass(frozen=True)
class Cast:
    """Who plays in one run, and which role and method each adversary uses."""

    owners: list[str]
    parties: list[str]  # every role on the wire
    adversaries: dict[str, tuple[str, str]]  # adversary -> (role, method)
    servers: list[str]
    dealer: str | None = None


def start_roles(backend: Backend, cfg: RunConfig, data: TargetData, session: int) -> Cast:
    """Start the roles the protocol's topology needs: one server, or two servers and a dealer."""
    owners = [owner_name(i) for i in range(cfg.clients)]
    first, second = seeded_parts(cfg.seed)  # every protocol starts from the same weights
    mpc_topology = get_codec(cfg.codec).topology == "mpc"
    common = {"codec": cfg.codec, "session": session}
    links = None
    if mpc_topology and cfg.tap == "one":  # only the owners' links to server 0
        links = frozenset(link(o, SERVER0) for o in owners)
    taps = {EAVESDROPPER: Tap(links, cfg.snaplen, FULL_KINDS)}

    backend.start(EAVESDROPPER, Eavesdropper, taps, frac_bits=cfg.frac_bits, **common)
    if mpc_topology:
        params = {"w1": second.fc1.weight.T, "b1": second.fc1.bias,
                  "w2": second.fc2.weight.T, "b2": second.fc2.bias}
        shares = {k: ring.share(ring.encode(v, cfg.frac_bits)) for k, v in params.items()}
        for party, name in enumerate((SERVER0, SERVER1)):
            backend.start(name, ShareServer, taps, party=party,
                          params={k: v[party] for k, v in shares.items()},
                          frac_bits=cfg.frac_bits, lr=cfg.train.lr,
                          momentum=cfg.train.momentum, **common)
        backend.start(DEALER, Dealer, taps, **common)
        owner_cls, owner_kw = SharingOwner, {"frac_bits": cfg.frac_bits}
        servers = [SERVER0, SERVER1]
        adversaries = {"eavesdropper": (EAVESDROPPER, "attack"), "server": (SERVER0, "attack"),
                       "colluding-servers": (SERVER0, "attack_colluding")}
    else:
        backend.start(SERVER, ComputeServer, taps, model=second, config=cfg.train, **common)
        owner_cls, owner_kw = DataOwner, {"server": SERVER}
        servers = [SERVER]
        adversaries = {"eavesdropper": (EAVESDROPPER, "attack"), "server": (SERVER, "attack")}
    n_train, n_test = len(data.train.y), len(data.test.y)
    for i, name in enumerate(owners):
        tr, te = shard(n_train, cfg.clients, i), shard(n_test, cfg.clients, i)
        backend.start(
            name, owner_cls, taps, model=copy.deepcopy(first), config=cfg.train,
            defences=cfg.defences,
            train=(data.train.x[tr], data.train.y[tr]), test=(data.test.x[te], data.test.y[te]),
            **owner_kw, **common,
        )
    dealer = DEALER if mpc_topology else None
    parties = [EAVESDROPPER, *servers, *([dealer] if dealer else []), *owners]
    return Cast(owners, parties, adversaries, servers, dealer)


def run_protocol(
    backend: Backend,
    cfg: RunConfig,
    data: TargetData,
    aux: np.ndarray,
    judge: Callable[[], torch.nn.Module],
    progress: Any = None,
) -> list[RunResult]:
    """Train with ``cfg.clients`` owners, infer the private test set, attack it, score it.

    Training and inference happen once; each adversary in ``cfg.adversaries`` that the
    protocol's topology has then attacks what it holds, giving one result per adversary.
    """
    t0 = time.perf_counter()
    session = secrets.randbits(64)  # fresh per run: frames of one run are refused by another
    cast = start_roles(backend, cfg, data, session)
    owners, names = cast.owners, cast.parties
    n_test = len(data.test.y)
    backend.connect()
    # The trust registry: every party's public identity, pinned at every party (a no-op for
    # codecs without keys). Private keys were made inside each role and never leave it.
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

    steps = sum(r.batches for r in reports) * cfg.epochs
    after_training = _snapshot(backend, cast)
    if cast.dealer and cfg.reveal_model:
        backend.call(SERVER0, "reveal_model")
    after_reveal = _snapshot(backend, cast)
    infer: list[InferenceReport] = backend.call_all([(n, "infer", ()) for n in owners])
    target_acc = sum(r.correct for r in infer) / sum(r.examples for r in infer)
    after_inference = _snapshot(backend, cast)
    batches = sum(-(-r.examples // INFER_BATCH) for r in infer)

    judge_model = judge()  # trained concurrently elsewhere; wait for it only now
    # What a guess that knows nothing scores: the mean training image for every test image.
    mean_guess = np.repeat(data.train.x.mean(0, keepdims=True), n_test, axis=0)
    baseline = score(mean_guess, data.test.x, data.test.y, judge_model).to_dict()
    # Every adversary attacks at once: they are different parties, each querying the oracle.
    adversaries = [a for a in cfg.adversaries if a in cast.adversaries]
    # White-box threat model: the adversary knows the first part's weights (He et al. 2019;
    # with several owners an eavesdropper reads them off the WEIGHTS frames anyway).
    weights = (backend.call(owners[0], "first_part_weights")
               if any(needs_weights(m) for m in cfg.attacks) else None)
    pairs = [(a, m) for m in cfg.attacks for a in adversaries]
    attacks: list[list[Reconstruction]] = []
    for method in cfg.attacks:  # adversaries in parallel; one rung of the ladder at a time
        attacks += backend.call_all(
            [(*cast.adversaries[a], (owners, aux, cfg.attack_epochs, cfg.seed, method, weights))
             for a in adversaries])
    seconds = time.perf_counter() - t0
    results = []
    epsilon = build_defences(parse_defence(t) for t in cfg.defences).epsilon()
    for (adversary, method), recons in zip(pairs, attacks, strict=True):
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
            attack_method=method, defences=list(cfg.defences), epsilon=epsilon,
        ))
    # Counted once the attacks (whose oracle queries cross the wire too) are done.
    stats = sum(backend.call_all([(n, "wire_stats", ()) for n in names]), WireStats())
    placement = backend.placement()
    mpc = _mpc_report(cast, (after_training, after_reveal, after_inference), steps, batches,
                      cfg)
    if mpc is not None:
        mpc["server0_wait_seconds"] = backend.call(SERVER0, "wait_seconds")
    for r in results:
        r.wire, r.placement, r.mpc = stats, placement, mpc
    return results


@dataclass(frozen=True)
class Snapshot:
    rounds: int
    online_bytes: int
    dealer_bytes: int


def _snapshot(backend: Backend, cast: Cast) -> Snapshot:
    """Counters of the two-party computation so far (zero for a one-server topology)."""
    if cast.dealer is None:
        return Snapshot(0, 0, 0)
    s0, s1, dealer = backend.call_all([(n, "wire_stats", ()) for n in (*cast.servers,
                                                                       cast.dealer)])
    online = s0.bytes_sent[(SERVER0, SERVER1)] + s1.bytes_sent[(SERVER1, SERVER0)]
    return Snapshot(backend.call(SERVER0, "wire_rounds"), online, dealer.bytes)


def _mpc_report(cast: Cast, snapshots: tuple[Snapshot, Snapshot, Snapshot], steps: int,
                batches: int, cfg: RunConfig) -> dict[str, Any] | None:
    if cast.dealer is None:
        return None
    trained, revealed, inferred = snapshots

    def per(a: Snapshot, b: Snapshot, n: int) -> dict[str, float]:
        return {"rounds": (b.rounds - a.rounds) / max(n, 1),
                "online_bytes": (b.online_bytes - a.online_bytes) / max(n, 1),
                "dealer_bytes": (b.dealer_bytes - a.dealer_bytes) / max(n, 1)}

    zero = Snapshot(0, 0, 0)
    return {
        "rounds": inferred.rounds, "online_bytes": inferred.online_bytes,
        "dealer_bytes": inferred.dealer_bytes, "frac_bits": cfg.frac_bits,
        "channel_encryption": cfg.channel_encryption, "tap": cfg.tap,
        "inference_weights": "public" if cfg.reveal_model else "shared",
        "per_training_step": per(zero, trained, steps) | {"steps": steps},
        "reveal_model": per(trained, revealed, 1),
        "per_inference_batch": per(revealed, inferred, batches) | {"batches": batches},
    }
