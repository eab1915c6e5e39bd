"""The Python entry point: audit a split network without the command line.

    from actors.api import LabOptions, run_lab
    report = run_lab(LabOptions(model="cnn", cut="conv1", protocols=("plaintext",),
                                attacks=("conv", "whitebox"), backend="local", epochs=2))
    for run in report.runs:
        print(run.protocol, run.attack_method, run.attack.ssim)
    report.to_json()  # the results.json schema

``model`` is a built-in name, ``package.module:function``, or a ready
:class:`~actors.nets.descriptor.SplitNetwork`; ``dataset`` is a ``--dataset`` name or a
loaded :class:`~actors.data.TargetData`. Every other option is the CLI flag of the same name
(``python -m actors.simulate --help``). The CLI is a thin layer over :func:`run_lab`.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.data import DatasetSpec, TargetData, load_target, parse_dataset
from actors.faults import ChaosSpec
from actors.fsha_pilot import DEFAULT_PILOT, parse_pilot
from actors.hijack_lab import malicious_kind
from actors.lab import ADVERSARIES, RunConfig, RunResult, run_protocol
from actors.malicious import MALICIOUS, MALICIOUS_COLLUDING
from actors.nets.descriptor import SplitNetwork
from actors.nets.shareable import check_shareable
from actors.nets.zoo import DEFAULT_LR, build_network, default_lr, parse_model
from actors.owner import TrainConfig
from actors.partition import Partition
from attack.auxiliary import check_aux, load_aux
from attack.fit_sharing import FitLedger
from attack.ladder import ATTACKS
from attack.validator import train_validator_cached
from defences.spec import DefenceSpec
from protocol import ring_kernels
from protocol.codecs import codec_names, get_codec
from protocol.errors import ConfigError

SCHEMA = 1


@dataclass(frozen=True)
class LabOptions:
    """Everything a lab run takes; the CLI's flags, parsed (specs are typed values)."""

    model: str | SplitNetwork = "mlp"
    cut: str | None = None
    topology: str = "vanilla"  # or "u-shaped": the owner keeps the tail and the labels
    tail_cut: str | None = None  # u-shaped: the middle's last layer (default: all but the last)
    dataset: str | DatasetSpec | TargetData = "mnist-small"
    data_dir: str | None = None
    download: bool = False
    train_size: int | None = None  # a seeded subset of the training split (None: all)
    protocols: tuple[str, ...] = ()  # empty: every registered protocol
    adversaries: tuple[str, ...] = ADVERSARIES
    attacks: tuple[str, ...] = ("mlp",)
    aux: str = "letters"
    aux_size: int = 6000
    epochs: int = 10
    attack_epochs: int = 20
    batch_size: int = 64
    lr: float | None = None  # None: the network's own (zoo.default_lr: 0.1, cnn 0.05)
    clients: int = 1
    partition: Partition = Partition("iid")
    schedule: str = "sequential"
    turn_batches: int | None = 1
    owner_actors: int | None = None
    placement: str = "pack"
    data_plane: str = "sockets"
    chaos: tuple[ChaosSpec, ...] = ()
    checkpoint_every: int = 25
    resume: str | None = None
    defences: tuple[DefenceSpec, ...] = ()
    frac_bits: int = 16
    reveal_model: bool = False
    channel_encryption: bool = True
    tap: str = "all"
    fsha_warmup: int | None = None  # malicious server: autoencoder warm-up steps (None: 500)
    fsha_pilot: str = DEFAULT_PILOT  # malicious server: which FSHA (actors.fsha_pilot.PILOTS)
    snaplen: int = 512
    seed: int = 0
    out: str | None = None  # where checkpoints go (the CLI also writes results there)
    address: str | None = None
    backend: str = "ray"  # or "local": every role in this process
    quiet: bool = True
    #: Adversaries whose attack fits train on identical bytes fit once (attack.fit_sharing);
    #: False: each fits its own (the same numbers, slower: tests check they agree).
    share_fits: bool = True
    #: On Ray, the two-server protocols run beside the one-server ones (protocol_lanes);
    #: False: one protocol at a time (each protocol's seconds then are its own alone).
    overlap_protocols: bool = True

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ConfigError(f"unknown attack {unknown[0]!r}: choose from {', '.join(ATTACKS)}")
        from actors.nets.zoo import TOPOLOGIES

        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"unknown topology {self.topology!r}: choose from "
                              f"{', '.join(TOPOLOGIES)}")
        bad = [a for a in self.adversaries if a not in (*ADVERSARIES, *MALICIOUS)]
        if bad:
            raise ConfigError(f"unknown adversary {bad[0]!r}: choose from "
                              f"{', '.join((*ADVERSARIES, *MALICIOUS))}")
        kind = malicious_kind(tuple(self.adversaries))  # a malicious server runs alone
        if kind is not None and self.topology != "vanilla":
            raise ConfigError(f"--adversary {kind} needs --topology vanilla: FSHA answers the "
                              "cut layer's activations, which a u-shaped server does not get "
                              "with labels")
        pilot = parse_pilot(self.fsha_pilot).name
        # An FSHA choice with no malicious server would be silently ignored: say so instead.
        if kind is None and pilot != DEFAULT_PILOT:
            raise ConfigError(f"--fsha-pilot {pilot} chooses a malicious server's "
                              f"attack: it needs --adversary {' or '.join(MALICIOUS)}")

    def config_json(self) -> dict[str, Any]:
        """Every option, as results.json's ``config`` records it (specs as their flag text)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, SplitNetwork):
                value = value.name
            elif isinstance(value, TargetData):
                value = value.name
            elif isinstance(value, tuple):
                value = [v if isinstance(v, (str, int, float)) else str(v) for v in value]
            elif value is not None and not isinstance(value, (str, int, float, bool)):
                value = str(value)
            out[f.name] = value
        return out


@dataclass
class LabReport:
    """What a lab run returns: one result per protocol, adversary and rung (typed), the
    protocols skipped and why, the network that ran and the options."""

    options: LabOptions
    network: SplitNetwork
    runs: list[RunResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: What results.json's ``config`` records: the CLI's flags when run from the CLI (the
    #: stable schema: every flag by its name), else the options.
    config: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        config = self.config if self.config is not None else self.options.config_json()
        return {"schema": SCHEMA, "config": config,
                "network": {"name": self.network.name, "cut": self.network.cut,
                            "input_shape": list(self.network.input_shape),
                            "cut_shape": list(self.network.cut_shape),
                            "classes": self.network.classes},
                "skipped": self.skipped, "runs": [r.to_json() for r in self.runs]}


def load_dataset(options: LabOptions) -> TargetData:
    if isinstance(options.dataset, TargetData):
        return options.dataset
    spec = (parse_dataset(options.dataset) if isinstance(options.dataset, str)
            else options.dataset)
    return load_target(spec, seed=options.seed, data_dir=options.data_dir,
                       download=options.download, n_train=options.train_size,
                       min_train=options.batch_size)


def build(options: LabOptions, data: TargetData) -> SplitNetwork:
    """The run's split network, checked against the dataset's shapes."""
    if isinstance(options.model, SplitNetwork):
        net = options.model
        if net.topology != options.topology:
            raise ConfigError(f"network {net.name} is a {net.topology} split; topology "
                              f"{options.topology} needs one built that way")
        if (net.input_shape, net.classes) != (data.input_shape, data.classes):
            raise ConfigError(f"network {net.name} takes {net.input_shape} inputs and "
                              f"{net.classes} classes; the dataset has {data.input_shape} and "
                              f"{data.classes}")
        return net
    return build_network(parse_model(options.model, options.cut, options.topology,
                                     options.tail_cut), options.seed,
                         data.input_shape, data.classes)


def runnable_protocols(options: LabOptions, net: SplitNetwork) -> tuple[list[str], dict[str, str]]:
    """The protocols to run, and those skipped with the reason (``--protocol all`` only:
    a protocol asked for by name that cannot run is an error)."""
    asked = list(options.protocols) or codec_names()
    explicit = bool(options.protocols)
    run, skipped = [], {}
    for protocol in asked:
        reason = _cannot_run(protocol, options, net)
        if reason is None:
            run.append(protocol)
        elif explicit:
            raise ConfigError(reason)
        else:
            skipped[protocol] = reason
    if not run:
        raise ConfigError("no protocol can run: " + "; ".join(skipped.values()))
    return run, skipped


def _cannot_run(protocol: str, options: LabOptions, net: SplitNetwork) -> str | None:
    if protocol not in codec_names():
        return f"unknown protocol {protocol!r}: choose from {', '.join(codec_names())}"
    if get_codec(protocol).topology != "mpc":
        if malicious_kind(tuple(options.adversaries)) == MALICIOUS_COLLUDING:
            return f"{MALICIOUS_COLLUDING} needs two servers (secret-shared)"
        return None
    if set(options.attacks) == {"output"}:
        return "--attack output: the output point is a server's softmax, secret sharing has none"
    try:
        check_shareable(net, options.frac_bits)
    except ConfigError as exc:
        return str(exc)
    return None


def _check_label_defences(options: LabOptions, net: SplitNetwork) -> None:
    from actors.ushaped import check_topology
    from defences.spec import build_defences

    if net.topology == "vanilla":
        check_topology("vanilla", attacks=options.attacks,
                       label_defences=build_defences(options.defences).label_defences)
    elif options.attacks and set(options.attacks) <= {"output"}:
        check_topology("u-shaped", attacks=options.attacks, label_defences=[])


def _judge(options: LabOptions, data: TargetData) -> tuple[Callable[[], torch.nn.Module], str]:
    """The validator, trained on a spare core while the owners and servers train (on Ray)."""
    train = functools.partial(train_validator_cached, data.train.x, data.train.y, data.classes,
                              seed=options.seed)
    if options.backend != "ray":
        return functools.cache(train), "in-process"
    from actors.ray_backend import ROLE_CPUS, init_ray, ray

    where = init_ray(options.address, quiet=True)
    # No whole CPU reserved: the roles' shares (ROLE_CPUS each) must not wait for it.
    ref = ray.remote(num_cpus=ROLE_CPUS)(train_validator_cached).remote(
        data.train.x, data.train.y, data.classes, seed=options.seed)
    return functools.cache(lambda: ray.get(ref)), where


@dataclass(frozen=True)
class _Aux:
    """The auxiliary set, loaded now or coming from a Ray task (``get`` waits for it)."""

    get: Callable[[], np.ndarray]
    size: int


def _aux(options: LabOptions, data: TargetData) -> _Aux:
    """The attacker's auxiliary set. Rendering the letters takes seconds of CPU that no one
    needs before the first attack, so on Ray a task renders them while the first protocol
    trains (its checks still fail at once); every other set is read here."""
    args = (options.aux, options.aux_size, options.seed, data.input_shape)
    if options.backend == "ray" and options.aux == "letters":
        from actors.ray_backend import ray

        check_aux(options.aux, options.aux_size, data.input_shape)
        ref = ray.remote(num_cpus=0)(load_aux).remote(*args)
        return _Aux(functools.cache(lambda: np.ascontiguousarray(ray.get(ref))),
                    options.aux_size)
    aux = np.ascontiguousarray(load_aux(*args, holdout=data.holdout.x, data_dir=options.data_dir,
                                        download=options.download))
    return _Aux(lambda: aux, len(aux))


def protocol_lanes(options: LabOptions, protocols: list[str]) -> list[list[str]]:
    """Which protocols run side by side on Ray: the two-server ones (CPU-bound, the exact ring
    products keep both servers and the dealer busy) in one lane, the one-server ones (latency-
    bound: owner and server take turns, a core stays idle) one after another in the other.
    Each protocol keeps its own roles, keys and wire; the numbers are a protocol's own. One lane
    in-process, or with ``overlap_protocols`` off (to time each protocol alone)."""
    if options.backend != "ray" or not options.overlap_protocols:
        return [list(protocols)]
    two_server = [p for p in protocols if get_codec(p).topology == "mpc"]
    rest = [p for p in protocols if p not in two_server]
    return [lane for lane in (two_server, rest) if lane]


def _new_pool(options: LabOptions) -> Any:
    """A lane's pool of role workers (Ray: ``RolePool``), or None (in-process roles)."""
    if options.backend != "ray":
        return None
    from actors.ray_backend import RolePool

    return RolePool()


def _backend_factory(options: LabOptions, side_by_side: bool = False) -> Callable[..., Any]:
    if options.backend == "ray":
        from actors.ray_backend import ROLE_CPUS, RayBackend

        # Side by side, two protocols' roles must never wait for each other's CPU share (each
        # lane could hold part of what the other needs): none is reserved.
        return functools.partial(RayBackend, placement=options.placement,
                                 data_plane=options.data_plane,
                                 role_cpus=0.0 if side_by_side else ROLE_CPUS)
    from actors.backend import LocalBackend

    return lambda pool=None: LocalBackend()


def run_config(options: LabOptions, protocol: str, net: SplitNetwork | None = None) -> RunConfig:
    out = Path(options.out) if options.out else None
    lr = options.lr if options.lr is not None else (
        default_lr(net) if net is not None else DEFAULT_LR)
    return RunConfig(
        protocol=protocol, aux=options.aux, epochs=options.epochs,
        attack_epochs=options.attack_epochs, clients=options.clients, seed=options.seed,
        train=TrainConfig(batch_size=options.batch_size, lr=lr, seed=options.seed),
        adversaries=tuple(options.adversaries), frac_bits=options.frac_bits,
        reveal_model=options.reveal_model, tap=options.tap,
        channel_encryption=options.channel_encryption, snaplen=options.snaplen,
        defences=options.defences, attacks=options.attacks, partition=options.partition,
        schedule=options.schedule, turn_batches=options.turn_batches,
        owner_actors=options.owner_actors, chaos=options.chaos,
        checkpoint_every=options.checkpoint_every,
        checkpoint_dir=str(out / f"checkpoint-{protocol}") if out else None,
        resume=options.resume, fsha_warmup=options.fsha_warmup, fsha_pilot=options.fsha_pilot)


def run_lab(options: LabOptions, *, progress: Callable[[str, int], Any] | None = None,
            after_protocol: Callable[[str, Any], None] | None = None) -> LabReport:
    """Train, attack and score ``options``' network under each protocol; returns the
    typed results. ``progress(protocol, epochs)`` may return a tqdm-like bar;
    ``after_protocol(protocol, backend)`` runs before each backend shuts down (captures)."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    ring_kernels.forced_kernel()  # a bad SPLITWIRE_RING_KERNEL fails here, not in a role
    data = load_dataset(options)
    if options.clients > len(data.train.y):
        raise ConfigError(f"--clients {options.clients} exceeds the {len(data.train.y)} "
                          "training images (every owner needs one)")
    net = build(options, data)
    _check_label_defences(options, net)
    protocols, skipped = runnable_protocols(options, net)
    for protocol, reason in skipped.items():
        sys.stderr.write(f"skipping --protocol {protocol}: {reason}\n")
    judge, where = _judge(options, data)
    aux = _aux(options, data)
    if not options.quiet:
        print(f"SplitWire: {net.describe()}; {len(data.train.y)} train / {len(data.test.y)} "
              f"private test images of {data.name}, aux={options.aux} ({aux.size} images), "
              f"protocols: {', '.join(protocols)}, Ray: {where}", flush=True)
    report = LabReport(options, net, skipped=skipped)
    lanes = protocol_lanes(options, protocols)
    make_backend = _backend_factory(options, side_by_side=len(lanes) > 1)
    fits = FitLedger(share=options.share_fits)  # one fit per distinct set of attack inputs

    def run_lane(lane: list[str]) -> dict[str, list[RunResult]]:
        done: dict[str, list[RunResult]] = {}
        # Each protocol keeps roles of its own (keys, state, wire), but the next protocol in
        # the lane hosts its roles in the worker processes the last one leaves.
        pool = _new_pool(options)
        try:
            for protocol in lane:
                done[protocol] = run_one(protocol, make_backend(pool=pool))
        finally:
            if pool is not None:
                pool.close()
        return done

    def run_one(protocol: str, backend: Any) -> list[RunResult]:
        bar = progress(protocol, options.epochs) if progress else None
        started = time.perf_counter() - t0
        try:
            results = run_protocol(backend, run_config(options, protocol, net), data, aux.get,
                                   judge, progress=bar, net=net, fits=fits)
            for result in results:
                result.started = started
            if after_protocol is not None:
                after_protocol(protocol, backend)
            return results
        finally:
            if bar is not None:
                bar.close()
            backend.shutdown()

    if len(lanes) == 1:
        runs = run_lane(lanes[0])
    else:
        with ThreadPoolExecutor(len(lanes), thread_name_prefix="lane") as threads:
            futures = [threads.submit(run_lane, lane) for lane in lanes]
            wait(futures)  # a failed lane is raised once the others are done
        runs = {k: v for f in futures for k, v in f.result().items()}
    report.runs = [r for protocol in protocols for r in runs[protocol]]
    report.seconds = time.perf_counter() - t0
    return report


def audit(model: str | SplitNetwork = "mlp",
          dataset: str | DatasetSpec | TargetData = "mnist-small",
          **options: Any) -> LabReport:
    """``run_lab`` with keyword options: ``audit("cnn", cut="conv1", backend="local")``."""
    return run_lab(replace(LabOptions(), model=model, dataset=dataset, **options))
