"""One protocol run, start to finish, on any backend: train, infer, attack, measure.

The lab is the only party that knows the ground truth (the owners' private test images); it uses
them solely to score what the adversary reconstructed. Nothing here imports Ray.
"""

from __future__ import annotations

import functools
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors import hijack_lab, wrap_watch
from actors.adversary import InversionAttacker, Reconstruction
from actors.backend import Backend, Method
from actors.data import TargetData
from actors.eavesdropper import Eavesdropper
from actors.faults import ChaosSpec, parse_chaos
from actors.fedserver import FED_SERVER, FedServer
from actors.fsha_pilot import DEFAULT_PILOT, PILOTS, PilotChoice, parse_pilot
from actors.mpc_roles import (
    DEALER,
    SERVER0,
    SERVER1,
    Dealer,
    ShareServer,
    SharingOwner,
    timing_report,
)
from actors.nets.descriptor import SplitNetwork
from actors.nets.shareable import shareable_layers
from actors.nets.zoo import ModelSpec, build_network
from actors.owner import DataOwner, InferenceReport, TrainConfig
from actors.owner_host import OwnerHost, OwnerSpec
from actors.partition import Partition, parse_partition, split_indices
from actors.role import Role
from actors.server import ComputeServer
from actors.training import Trainer, TrainingSetup
from actors.ushaped import UShapedSharingOwner, check_topology, label_reports, role_classes
from actors.wire import Tap, link
from attack import metrics, validator
from attack.baselines import instance_block, label_only_parts
from attack.fit_sharing import FitLedger
from attack.ladder import intercept_point, needs_weights
from attack.scorecard import ScoreCard
from defences.accounting import run_epsilon
from defences.spec import DefenceSpec, build_defences, parse_defence
from protocol import ring
from protocol.codecs import get_codec
from protocol.endpoint import WireStats
from protocol.errors import ConfigError
from protocol.frame import MessageKind

SERVER = "server"
EAVESDROPPER = "eavesdropper"
#: Who may attack. The eavesdropper holds only tapped bytes; the server what it decrypted to
#: compute on (under sharing: server 0's shares); colluding servers pool both servers' shares.
ADVERSARIES = ("eavesdropper", "server", "colluding-servers")
INFER_BATCH = 250
#: Frames the eavesdropper always keeps whole (its attack inverts them), whatever its snaplen.
FULL_KINDS = frozenset({MessageKind.INFER_ACTIVATIONS, MessageKind.INFER_SHARE,
                        MessageKind.PREDICTIONS})
#: Also handed to the eavesdropper whole: u-shaped returned gradients, the label attack's
#: input (it keeps a ring of the last ones whole; its capture keeps their snaplen prefix).
TAPPED_WHOLE = FULL_KINDS | {MessageKind.MIDDLE_GRADIENTS}


def owner_name(i: int) -> str:
    return f"owner:{i}"


@dataclass(frozen=True)
class RunConfig:
    """One protocol run's settings; every spec arrives parsed (typed values, never text)."""

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
    defences: tuple[DefenceSpec, ...] = ()  # the owners' defences, parsed once
    attacks: tuple[str, ...] = ("mlp",)  # rungs of the attack ladder each adversary runs
    partition: Partition = Partition("iid")  # how the owners' shards split the data
    schedule: str = "sequential"  # vanilla split learning, or splitfed
    owner_actors: int | None = None  # pool actors hosting the owners (None: the backend's)
    chaos: tuple[ChaosSpec, ...] = ()  # kill that role at that training step
    # Sequential schedule: batches an owner trains before handing the first part on (None: its
    # whole shard). One batch per turn keeps label-skewed owners from undoing each other.
    turn_batches: int | None = 1
    checkpoint_every: int = 25  # training steps between the lab's checkpoints
    checkpoint_dir: str | None = None  # where each epoch's checkpoint is written (--resume)
    resume: str | None = None  # continue training from this checkpoint directory
    # A malicious server's autoencoder steps on its public data before training (None: the
    # lab's FSHA setting, 500); small runs and tests shorten it.
    fsha_warmup: int | None = None
    # Which FSHA a malicious server runs (--fsha-pilot): its pilot held still at the first
    # part's initial weights (the lab's), or trained with the decoder as the authors do.
    fsha_pilot: PilotChoice = PILOTS[DEFAULT_PILOT]

    def __post_init__(self) -> None:
        # Specs may be given as their flag text (tests, notebooks): parsed here, once.
        coerce = object.__setattr__
        if isinstance(self.partition, str):
            coerce(self, "partition", parse_partition(self.partition))
        coerce(self, "chaos", tuple(parse_chaos(c) if isinstance(c, str) else c
                                    for c in self.chaos))
        coerce(self, "fsha_pilot", parse_pilot(self.fsha_pilot))
        coerce(self, "defences", tuple(parse_defence(d) if isinstance(d, str) else d
                                       for d in self.defences))

    @property
    def codec(self) -> str:
        """The codec on the wire: the protocol's, or its plaintext-links variant."""
        if get_codec(self.protocol).topology == "mpc" and not self.channel_encryption:
            return "secret-shared/plaintext-links"
        return self.protocol

    @property
    def defence_texts(self) -> list[str]:
        return [str(d) for d in self.defences]

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
    reconstructions: np.ndarray  # (N, C, H, W), aligned with the lab's test images
    originals: np.ndarray
    labels: np.ndarray
    epoch_losses: list[float]
    queries_used: int
    baseline: dict[str, float] = field(default_factory=dict)
    mpc: dict[str, Any] | None = None
    attack_method: str = "mlp"
    defences: list[str] = field(default_factory=list)
    epsilon: tuple[float, float] | None = None
    batches: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    schedule: str = "sequential"
    partition: str = "iid"
    owner_actors: int = 1
    model: str = ""
    cut: str = ""
    #: Leakage beyond the label: re-identification, the label-only baseline, the excess.
    instance: dict[str, Any] = field(default_factory=dict)
    epsilon_run: dict[str, Any] | None = None  # the whole run's (epsilon, delta) per example
    #: An owner's detector judged the server malicious and stopped training: who, when, why.
    detection: dict[str, Any] | None = None
    #: A malicious server's attack over training (actors.hijack_lab.score_curve).
    fsha_curve: list[dict[str, Any]] | None = None
    topology: str = "vanilla"  # or "u-shaped" (actors.ushaped)
    #: What this adversary infers of the training labels (attack.labels), beside chance.
    label_leak: dict[str, Any] = field(default_factory=dict)
    #: The attack's fit: its digest and who ran it (shared when another adversary's was
    #: byte-identical; attack.fit_sharing). None for rungs that do not fit.
    fit: dict[str, Any] | None = None
    #: When this protocol's run began, in seconds since the lab's start (protocols may overlap:
    #: actors.api.protocol_lanes); ``seconds`` is how long it took.
    started: float = 0.0

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
            "started_s": self.started,
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
            **self.instance,
            "epsilon_run": self.epsilon_run,
            "schedule": self.schedule,
            "partition": self.partition,
            "model": self.model,
            "cut": self.cut,
            "owner_actors": self.owner_actors,
            "batches": self.batches,
            "restarts": self.restarts,
            "detection": self.detection,
            "topology": self.topology,
            "labels": self.label_leak,
            **({"mpc": self.mpc} if self.mpc else {}),
            **({"fsha_curve": self.fsha_curve} if self.fsha_curve is not None else {}),
            "fit": self.fit,
        }


def score(recon: np.ndarray, x: np.ndarray, y: np.ndarray,
          judge: torch.nn.Module) -> metrics.AttackMetrics:
    return metrics.AttackMetrics(
        mse=metrics.mse(recon, x), psnr=metrics.psnr(recon, x), ssim=metrics.ssim(recon, x),
        validator_accuracy=validator.accuracy(judge, recon, y),
    )


@dataclass(frozen=True)
class Cast:
    """Who plays in one run, where the owners live, and which role and method each
    adversary uses."""

    owners: list[str]
    parties: list[str]  # every started role (Ray actors): names to call
    adversaries: dict[str, tuple[str, Method]]  # adversary -> (role, its attack_with)
    servers: list[str]
    host_of: dict[str, str]  # owner -> the pool actor hosting it
    train_shards: list[np.ndarray]  # indices into the training split, per owner
    test_shards: list[np.ndarray]  # indices into the private test split, per owner
    initial: np.ndarray  # the first part every protocol starts from, with zero momentum
    dealer: str | None = None
    fed_server: str | None = None

    @property
    def hosts(self) -> list[str]:
        return list(dict.fromkeys(self.host_of.values()))


def host_name(k: int) -> str:
    return f"owners:{k}"


def start_roles(backend: Backend, cfg: RunConfig, net: SplitNetwork, data: TargetData,
                session: int) -> Cast:
    """Start the roles the protocol's topology needs: one server, or two servers and a dealer;
    the owners on a pool of hosts; a fed server for SplitFed. Every role gets the network
    descriptor: the shapes it checks frames against, and its part's initial weights."""
    owners = [owner_name(i) for i in range(cfg.clients)]
    mpc_topology = get_codec(cfg.codec).topology == "mpc"
    common = {"codec": cfg.codec, "session": session, "net": net}
    links = None
    if mpc_topology and cfg.tap == "one":  # only the owners' links to server 0
        links = frozenset(link(o, SERVER0) for o in owners)
    taps = {EAVESDROPPER: Tap(links, cfg.snaplen, TAPPED_WHOLE)}

    check_topology(net.topology, attacks=cfg.attacks,
                   label_defences=build_defences(cfg.defences).label_defences)
    backend.start(EAVESDROPPER, Eavesdropper, taps, frac_bits=cfg.frac_bits,
                  snaplen=cfg.snaplen, **common)
    if mpc_topology:
        servers, adversaries = _start_share_servers(backend, cfg, net, taps, common)
        owner_cls = UShapedSharingOwner if net.tail is not None else SharingOwner
        owner_kw = {"frac_bits": cfg.frac_bits}
    else:
        owner_cls, server_cls = role_classes(net.topology == "u-shaped")
        if hijack_lab.malicious_kind(cfg.adversaries) is not None:
            server_cls = hijack_lab.one_server_class(cfg.adversaries)
        backend.start(SERVER, server_cls, taps, config=cfg.train, **common)
        owner_kw = {"server": SERVER}
        servers = [SERVER]
        adversaries = {"eavesdropper": (EAVESDROPPER, Eavesdropper.attack_with),
                       "server": (SERVER, ComputeServer.attack_with),
                       **hijack_lab.malicious_adversaries(cfg.adversaries, False, SERVER)}
    initial = net.initial_state()
    fed = None
    if cfg.schedule == "splitfed":
        fed = FED_SERVER
        backend.start(FED_SERVER, FedServer, taps, initial=initial,
                      **{k: v for k, v in common.items() if k != "net"})
    train_shards = split_indices(data.train.y, cfg.clients, cfg.partition, cfg.seed)
    n_test = len(data.test.y)
    test_shards = split_indices(data.test.y, cfg.clients, cfg.partition, cfg.seed + 1,
                                min_size=1 if n_test >= cfg.clients else 0)
    # Virtual owners: N owners on K pool actors (Flower's simulation engine), in contiguous
    # blocks: turns go owner to owner, so most hand-offs stay inside one process.
    pool = max(1, min(cfg.owner_actors or backend.pool_size(), cfg.clients))
    host_of = {o: host_name(i * pool // cfg.clients) for i, o in enumerate(owners)}
    for k in range(pool):
        specs = [OwnerSpec(o, (data.train.x[tr], data.train.y[tr]),
                           (data.test.x[te], data.test.y[te]))
                 for o, tr, te in zip(owners, train_shards, test_shards, strict=True)
                 if host_of[o] == host_name(k)]
        backend.start(host_name(k), OwnerHost, taps, owners=specs, owner_cls=owner_cls,
                      config=cfg.train, defences=cfg.defences, **owner_kw, **common)
    dealer = DEALER if mpc_topology else None
    parties = [EAVESDROPPER, *servers, *([dealer] if dealer else []), *([fed] if fed else []),
               *[host_name(k) for k in range(pool)]]
    return Cast(owners, parties, adversaries, servers, host_of, train_shards, test_shards,
                initial, dealer, fed)


def _start_share_servers(backend: Backend, cfg: RunConfig, net: SplitNetwork,
                         taps: dict[str, Tap], common: dict[str, Any]
                         ) -> tuple[list[str], dict[str, tuple[str, Method]]]:
    """Two servers holding fresh additive shares of the server part, and the dealer."""
    # The server part as layers on shares, each server with fresh additive shares of it.
    layers, shares = shareable_layers(net, cfg.frac_bits)
    classes = hijack_lab.share_server_classes(cfg.adversaries)
    for party, name in enumerate((SERVER0, SERVER1)):
        backend.start(name, classes[party], taps, party=party, layers=layers,
                      params=shares[party], frac_bits=cfg.frac_bits, lr=cfg.train.lr,
                      momentum=cfg.train.momentum, **common)
    backend.start(DEALER, Dealer, taps, **{k: v for k, v in common.items() if k != "net"})
    adversaries = {"eavesdropper": (EAVESDROPPER, Eavesdropper.attack_with),
                   "server": (SERVER0, ShareServer.attack_with),
                   "colluding-servers": (SERVER0, ShareServer.attack_with_colluding),
                   **hijack_lab.malicious_adversaries(cfg.adversaries, True, SERVER0)}
    return [SERVER0, SERVER1], adversaries


def _check_chaos(cfg: RunConfig, mpc_topology: bool, total_steps: int) -> list[ChaosSpec]:
    specs = list(cfg.chaos)
    if specs and mpc_topology:
        raise ConfigError("--chaos needs a one-server protocol (plaintext, encrypted): a "
                          "secret-shared server's lost shares cannot be restored")
    for spec in specs:
        if spec.role.startswith("owner:") and int(spec.role[6:]) >= cfg.clients:
            raise ConfigError(f"--chaos {spec}: there are only {cfg.clients} owners")
        if spec.step >= total_steps:
            raise ConfigError(f"--chaos {spec}: the run has steps 0..{total_steps - 1}")
    return specs


def train(backend: Backend, cfg: RunConfig, cast: Cast, net: SplitNetwork,
          progress: Any = None, on_checkpoint: Callable[[int], None] | None = None,
          revive_server: Callable[[], None] | None = None,
          ) -> tuple[list[float], dict[str, int], int, int, dict[str, Any] | None]:
    """Train to the end (recovering from dead roles) or to a detector's verdict; deploy the
    final first part at every owner. Returns the epochs' losses, the batch ledger, restarts,
    training steps planned and the detection (``None``: none). ``revive_server``: what a
    rebuilt server needs before its checkpoint is restored (``hijack_lab.arm``'s re-arming)."""
    mpc_topology = cast.dealer is not None
    batches = [-(-len(tr) // cfg.train.batch_size) for tr in cast.train_shards]
    defences = build_defences(cfg.defences)  # one owner's, to know what its checkpoint holds
    setup = TrainingSetup(
        owners=cast.owners, host_of=cast.host_of, batches=batches,
        server=None if mpc_topology else SERVER, fed_server=cast.fed_server,
        parties=cast.parties, recoverable=not mpc_topology,
        checks=bool(defences.checks), defence_state=defences.stateful,
        revive_server=revive_server)
    fingerprint = {"protocol": cfg.protocol, "clients": cfg.clients, "seed": cfg.seed,
                   "partition": str(cfg.partition), "schedule": cfg.schedule,
                   "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
                   "defences": cfg.defence_texts, "epochs": cfg.epochs,
                   "turn_batches": cfg.turn_batches, "model": net.name, "cut": net.cut,
                   **({"topology": net.topology, "tail_cut": net.tail_cut}
                      if net.tail_cut is not None else {}),
                   # A malicious server's attack state is in the checkpoint: only the same
                   # attack (public data, warm-up) continues it.
                   **({"adversaries": list(cfg.adversaries), "aux": cfg.aux,
                       "fsha_warmup": cfg.fsha_warmup}
                      if hijack_lab.malicious_kind(cfg.adversaries) else {}),
                   # Only a non-default pilot: checkpoints from before the flag still resume.
                   **({"fsha_pilot": cfg.fsha_pilot.name}
                      if cfg.fsha_pilot.name != DEFAULT_PILOT else {})}
    if cfg.resume and mpc_topology:
        raise ConfigError("--resume needs a one-server protocol (plaintext, encrypted)")
    trainer = Trainer(backend, setup, epochs=cfg.epochs, schedule=cfg.schedule,
                      checkpoint_every=cfg.checkpoint_every, turn_batches=cfg.turn_batches,
                      initial=backend.put(cast.initial),
                      checkpoint_dir=Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None,
                      fingerprint=fingerprint, progress=progress, on_checkpoint=on_checkpoint)
    for spec in _check_chaos(cfg, mpc_topology, trainer.total_steps):
        if spec.role == SERVER:
            backend.call(SERVER, ComputeServer.arm_chaos, spec.step)
        else:
            backend.call(cast.host_of[spec.role], OwnerHost.owner_call, spec.role,
                         DataOwner.arm_chaos, spec.step)
    if cfg.resume:
        trainer.resume(Path(cfg.resume))
        if progress is not None:
            progress.update(trainer.pos.epoch)
    losses = trainer.run()
    detection = _detection(trainer)
    # Everyone deploys the final first part: the fed server's, or the last owner's, which it
    # hands to every other owner over the wire. After a detection: the part as it stood at the
    # detecting owner (mid-turn, mid-round), handed to the others the same way.
    if cast.fed_server is not None and detection is None:
        backend.call_all([(h, OwnerHost.each, (DataOwner.deploy, cast.fed_server))
                          for h in cast.hosts])
    else:
        last = trainer.holder if detection is None else str(detection["owner"])
        backend.call(cast.host_of[last], OwnerHost.owner_call, last, DataOwner.share_with,
                     [o for o in cast.owners if o != last])
        backend.call_all([(h, OwnerHost.each, (DataOwner.deploy,)) for h in cast.hosts])
    return (losses, trainer.counters(), trainer.ledger.restarts, trainer.total_steps,
            detection)


def _detection(trainer: Trainer) -> dict[str, Any] | None:
    """results.json's ``detection``: the verdict, the owner and the training steps run."""
    exc = trainer.detection
    if exc is None:
        return None
    verdict, owner = exc.verdict, exc.owner
    sys.stderr.write(f"{owner}: --defence {verdict.detector} judged the server malicious at "
                     f"step {verdict.step}; training stopped ({verdict.reason})\n")
    return verdict.to_json() | {"owner": owner, "steps_trained": verdict.step + 1,
                                "steps_planned": trainer.total_steps}


def attack_methods(cfg: RunConfig) -> list[str]:
    """The rungs this protocol can run. The output intercept point is the softmax a server
    answers with; under secret sharing no party but the owner ever holds it."""
    mpc_topology = get_codec(cfg.codec).topology == "mpc"
    methods = [m for m in cfg.attacks if not (mpc_topology and intercept_point(m) == "output")]
    if not methods:
        raise ConfigError("--attack output needs a one-server protocol (plaintext, encrypted): "
                          "under secret sharing only the owner sees the outputs")
    return methods


def pin_identities(backend: Backend, names: list[str]) -> None:
    """The trust registry: every party's public identity, pinned at every party (a no-op for
    codecs without keys). Private keys were made inside each role and never leave it."""
    registry: dict[str, bytes] = {}
    for found in backend.call_all([(n, Role.identities, ()) for n in names]):
        registry.update(found)
    backend.call_all([(n, Role.trust, (registry,)) for n in names])


@dataclass(frozen=True)
class Truth:
    """What only the lab knows: the private test images in the owners' order, the labels,
    the judge that scores reconstructions of them (and its features of the originals, for
    re-identification), and the two baselines: the mean image (a guess that knows nothing) and
    the label-only guess (the class-mean training image of the true label: what knowing the
    label alone gives)."""

    x: np.ndarray
    y: np.ndarray
    judge: torch.nn.Module
    baseline: dict[str, float]
    label_only: dict[str, Any]
    features: np.ndarray

    @classmethod
    def of(cls, data: TargetData, cast: Cast, judge: torch.nn.Module) -> Truth:
        order = np.concatenate(cast.test_shards)
        x, y = data.test.x[order], data.test.y[order]
        features = validator.read(judge, x).features
        # The two guesses repeat few images (the mean image; a class mean per label): the judge
        # reads each distinct image once.
        mean_image = data.train.x.mean(0, keepdims=True)
        mean_guess = np.repeat(mean_image, len(order), axis=0)
        mean_card = ScoreCard.of(mean_guess, x, y, judge, validator.read_distinct(
            judge, mean_image, np.zeros(len(order), np.int64)))
        distinct, index = label_only_parts(y, data.train.x, data.train.y)
        guess = distinct[index].reshape(x.shape)
        label_card = ScoreCard.of(guess, x, y, judge, validator.read_distinct(
            judge, distinct.reshape(len(distinct), *x.shape[1:]), index))
        return cls(x, y, judge, mean_card.metrics().to_dict(),
                   label_card.scores(guess, x, features), features)

    def card(self, recon: np.ndarray) -> ScoreCard:
        """Every per-image score of ``recon`` (reconstructions of ``x``, in its order)."""
        return ScoreCard.of(recon, self.x, self.y, self.judge)

    def instance(self, recon: np.ndarray, card: ScoreCard) -> dict[str, Any]:
        """Re-identification of ``recon`` and its excess over the label-only baseline
        (``attack.baselines.instance_report``, from the scorecard)."""
        return instance_block(card.scores(recon, self.x, self.features), self.label_only)


def run_attacks(backend: Backend, cfg: RunConfig, cast: Cast, aux: np.ndarray,
                methods: list[str], budgeted: bool, fits: FitLedger | None = None,
                ) -> list[Attacked]:
    """Every adversary the topology has runs every rung on what it holds: one
    :class:`Attacked` per (adversary, rung).

    Each adversary makes its own queries; adversaries whose fits would train on the same bytes
    (``attack.fit_sharing``) fit once, here or in an earlier protocol's run kept in ``fits``.
    """
    fits = FitLedger() if fits is None else fits
    owners = cast.owners
    adversaries = [a for a in cfg.adversaries if a in cast.adversaries]
    # White-box threat model: the adversary knows the first part's weights (He et al. 2019;
    # with several owners an eavesdropper reads them off the WEIGHTS frames anyway).
    weights = (backend.call(cast.host_of[owners[0]], OwnerHost.owner_call, owners[0],
                            DataOwner.first_part_weights)
               if any(needs_weights(m) for m in methods) else None)
    out: list[Attacked] = []
    points_done: set[str] = set()
    for method in methods:  # adversaries in parallel; one rung of the ladder at a time
        point = intercept_point(method)
        if budgeted and points_done and point not in points_done:
            # Querying the first part (cut-layer rungs) and the prediction API (output rung)
            # are two ways to spend one budget; each is scored as if it had all of it.
            parties = [cast.adversaries[a][0] for a in adversaries]
            backend.call_all([(cast.host_of[owners[0]], OwnerHost.owner_call,
                               (owners[0], DataOwner.refund_queries, p)) for p in parties])
        points_done.add(point)
        args = (owners, aux, cfg.attack_epochs, cfg.seed, method, weights, cfg.defence_texts)
        prepare = [(cast.adversaries[a][0], InversionAttacker.prepare_attack, (a, *args))
                   for a in adversaries]
        if point == "output":
            # One at a time: the owner's prediction API asks the server, which must not be
            # busy with an attack of its own (on Ray two such actors would wait on each other).
            digests = [backend.call(name, fn, *a) for name, fn, a in prepare]
        else:
            digests = backend.call_all(prepare)
        who = {a: f"{cfg.protocol} {a}" for a in adversaries}
        digests = [fits.key(d, who[a]) for a, d in zip(adversaries, digests, strict=True)]
        leaders: dict[str, str] = {}
        for a, digest in zip(adversaries, digests, strict=True):
            if digest is not None and digest not in fits and digest not in leaders:
                leaders[digest] = a
        sharers = backend.fit_sharers(len(leaders))
        fitted = backend.call_all([(cast.adversaries[a][0], InversionAttacker.fit_attack,
                                    (a, sharers)) for a in leaders.values()])
        for (digest, a), rung in zip(leaders.items(), fitted, strict=True):
            fits.add(digest, rung, who[a])
        got = backend.call_all([(*cast.adversaries[a], (a, owners, fits.get(d)))
                                for a, d in zip(adversaries, digests, strict=True)])
        out += [Attacked(a, method, recons, fits.report(d, who[a]))
                for a, d, recons in zip(adversaries, digests, got, strict=True)]
    return out


@dataclass(frozen=True)
class Attacked:
    """One adversary's run of one rung: its reconstructions, one per owner, and its fit."""

    adversary: str
    method: str
    reconstructions: list[Reconstruction]
    fit: dict[str, Any] | None  # FitLedger.report: the fit's digest and who ran it


def _per_owner(cast: Cast, data: TargetData, recons: list[Reconstruction], adversary: str,
               infer: dict[str, InferenceReport], card: ScoreCard) -> list[dict[str, Any]]:
    """One row per owner; ``card`` scores the owners' reconstructions concatenated in order."""
    rows, start = [], 0
    for i, rec in enumerate(recons):
        te = cast.test_shards[i]
        x = data.test.x[te]
        if rec.images.shape != x.shape:
            raise RuntimeError(
                f"{rec.owner}: {adversary} reconstructed {rec.images.shape} images, owner "
                f"sent {x.shape}: frames were lost")
        rows.append({
            "owner": rec.owner, "target_accuracy": infer[rec.owner].accuracy,
            "train_examples": len(cast.train_shards[i]), "test_examples": len(te),
            "attack": card.metrics(slice(start, start + len(te))).to_dict() if len(te) else None})
        start += len(te)
    return rows


def run_protocol(
    backend: Backend,
    cfg: RunConfig,
    data: TargetData,
    aux: np.ndarray | Callable[[], np.ndarray],
    judge: Callable[[], torch.nn.Module],
    progress: Any = None,
    on_checkpoint: Callable[[int], None] | None = None,
    net: SplitNetwork | None = None,
    fits: FitLedger | None = None,
) -> list[RunResult]:
    """Train ``net`` (default: the built-in ``mlp`` from ``cfg.seed``) with ``cfg.clients``
    owners, infer the private test set, attack it, score it.

    Training and inference happen once; each adversary in ``cfg.adversaries`` that the
    protocol's topology has then attacks what it holds, giving one result per adversary.
    ``fits`` carries fitted attacks between the protocols of one lab run (byte-identical
    inputs only: ``attack.fit_sharing``).
    """
    t0 = time.perf_counter()
    if net is None:
        net = build_network(ModelSpec("mlp"), cfg.seed, data.input_shape, data.classes)
    methods = attack_methods(cfg)
    if net.tail is not None:  # u-shaped: the outputs never leave the owner's tail
        methods = [m for m in methods if intercept_point(m) != "output"]
    session = secrets.randbits(64)  # fresh per run: frames of one run are refused by another
    cast = start_roles(backend, cfg, net, data, session)
    backend.connect()
    pin_identities(backend, cast.parties)
    # The auxiliary set may still be rendering on a spare core: wait only where it is needed.
    aux_of = aux if callable(aux) else functools.partial(np.asarray, aux)
    # Resumed: the checkpoint holds what the warm-up learnt, so it is not run again.
    warmup = 0 if cfg.resume else cfg.fsha_warmup
    rearm = (hijack_lab.arm(backend, cfg.adversaries, cast.servers, aux_of(), cfg.seed,
                            cfg.epochs * sum(-(-len(tr) // cfg.train.batch_size)
                                             for tr in cast.train_shards),
                            None if warmup is None else {"warmup": warmup},
                            cfg.fsha_pilot)
             if hijack_lab.malicious_kind(cfg.adversaries) is not None else None)

    losses, batches, restarts, steps, detection = train(backend, cfg, cast, net, progress,
                                                        on_checkpoint, rearm)
    after_training = _snapshot(backend, cast)
    if cast.dealer and cfg.reveal_model:
        backend.call(SERVER0, ShareServer.reveal_model)
    after_reveal = _snapshot(backend, cast)
    infer: dict[str, InferenceReport] = {
        r.owner: r for rs in backend.call_all([(h, OwnerHost.each, (DataOwner.infer,))
                                               for h in cast.hosts])
        for r in rs}
    target_acc = sum(r.correct for r in infer.values()) / sum(r.examples for r in infer.values())
    after_inference = _snapshot(backend, cast)
    n_batches = sum(-(-r.examples // INFER_BATCH) for r in infer.values())

    truth = Truth.of(data, cast, judge())  # the judge trained concurrently; wait only now
    # The owners' defences as the lab sees them (whether a budget binds, the epsilon).
    shield = build_defences(cfg.defences)
    attacks = run_attacks(backend, cfg, cast, aux_of(), methods, shield.budget is not None,
                          fits)
    curve = (hijack_lab.score_curve(backend, cfg.adversaries, cast.servers, data,
                                    cast.train_shards[0], cfg.seed, cfg.train.batch_size,
                                    truth.judge)
             if cfg.clients == 1 else [])
    seconds = time.perf_counter() - t0
    epsilon = shield.epsilon()
    epsilon_run = run_epsilon(shield.noise, cfg.epochs, n_examples=len(data.train.y))
    results = []
    for attacked in attacks:
        adversary, method, recons = attacked.adversary, attacked.method, attacked.reconstructions
        if adversary in hijack_lab.MALICIOUS:
            if method != methods[0]:
                continue  # FSHA's decoder is one attack, whatever rungs the ladder has
            method = cfg.fsha_pilot.method
        recon = np.concatenate([rec.images for rec in recons])
        card = truth.card(recon)
        results.append(RunResult(
            protocol=cfg.protocol, adversary=adversary, aux=cfg.aux, target_accuracy=target_acc,
            attack=card.metrics(), wire=WireStats(), seconds=seconds,
            per_owner=_per_owner(cast, data, recons, adversary, infer, card),
            placement={}, reconstructions=recon, originals=truth.x, labels=truth.y,
            epoch_losses=losses, queries_used=recons[0].queries_used, baseline=truth.baseline,
            attack_method=method, defences=cfg.defence_texts, epsilon=epsilon,
            batches=batches, restarts=restarts, schedule=cfg.schedule,
            partition=str(cfg.partition), owner_actors=len(cast.hosts), model=net.name,
            cut=net.cut, instance=truth.instance(recon, card), epsilon_run=epsilon_run,
            detection=detection,
            fsha_curve=curve if adversary in hijack_lab.MALICIOUS else None,
            fit=attacked.fit,
        ))
    # Counted once the attacks (whose oracle queries cross the wire too) are done, and every
    # role's mirrored frames have reached the taps (servers and the dealer included).
    backend.call_all([(n, Role.flush_taps, ()) for n in cast.parties])
    leaks = label_reports(backend, cast, list(dict.fromkeys(r.adversary for r in results)),
                          cfg.protocol, net, data.train.y)
    for r in results:
        r.topology, r.label_leak = net.topology, leaks.get(r.adversary, {})
    stats = sum(backend.call_all([(n, Role.wire_stats, ()) for n in cast.parties]),
                WireStats())
    placement = backend.placement()
    mpc = _mpc_report(cast, (after_training, after_reveal, after_inference), steps, n_batches,
                      cfg)
    if mpc is not None:
        mpc |= timing_report(backend, (*cast.servers, cast.dealer))
        # The stable schema keeps the older field: server 0's waits on the peer and the dealer.
        mpc["server0_wait_seconds"] = {k: mpc["seconds"][SERVER0].get(k, 0.0)
                                       for k in ("peer", "dealer")}
        mpc["fixed_point"] = _wrap_report(backend, cast, cfg.frac_bits)
    for r in results:
        r.wire, r.placement, r.mpc = stats, placement, mpc
    return results


def _wrap_report(backend: Backend, cast: Cast, frac_bits: int) -> dict[str, Any]:
    """``mpc.fixed_point``: whether an owner saw the trace of a truncation wrap (and says so)."""
    reports = backend.call_all([(h, OwnerHost.each, (SharingOwner.wrap_report,))
                                for h in cast.hosts])
    report = wrap_watch.merge(frac_bits, {r["owner"]: r for rs in reports for r in rs})
    wrap_watch.warn(report)
    return report


@dataclass(frozen=True)
class Snapshot:
    rounds: int
    online_bytes: int
    dealer_bytes: int


def _snapshot(backend: Backend, cast: Cast) -> Snapshot:
    """Counters of the two-party computation so far (zero for a one-server topology)."""
    if cast.dealer is None:
        return Snapshot(0, 0, 0)
    s0, s1, dealer = backend.call_all([(n, Role.wire_stats, ())
                                       for n in (*cast.servers, cast.dealer)])
    online = s0.bytes_sent[(SERVER0, SERVER1)] + s1.bytes_sent[(SERVER1, SERVER0)]
    return Snapshot(backend.call(SERVER0, ShareServer.wire_rounds), online, dealer.bytes)


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
