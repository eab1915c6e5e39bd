"""``python -m actors.simulate``: train a split network on Ray, attack the wire, report.

Every registered protocol (``--protocol all``) runs on the same data, seed and initial weights,
so the rows of the summary differ only in what crossed the wire.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.fsha_pilot import DEFAULT_PILOT, PILOTS
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


def _spec(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that parses a spec once into its typed value (bad text: exit 2)."""
    def typed(text: str) -> Any:
        try:
            return parse(text)
        except SplitWireError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    typed.__name__ = parse.__name__
    return typed


def _defence(text: str) -> Any:
    from defences.spec import parse_defence

    return _spec(parse_defence)(text)


def _partition(text: str) -> Any:
    from actors.partition import parse_partition

    return _spec(parse_partition)(text)


def _dataset(text: str) -> Any:
    from actors.data import parse_dataset

    return _spec(parse_dataset)(text)


def _chaos(text: str) -> Any:
    from actors.faults import parse_chaos

    return _spec(parse_chaos)(text)


def build_parser() -> argparse.ArgumentParser:
    from actors.data import DATASETS
    from actors.lab import ADVERSARIES
    from actors.malicious import MALICIOUS
    from actors.nets.zoo import BUILTINS
    from attack.auxiliary import AUX_CHOICES
    from attack.ladder import ATTACKS

    protocols = [*codec_names(), "all"]
    p = _Parser(prog="python -m actors.simulate", description=__doc__,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--protocol", choices=protocols, default="all",
                   help="what protects the wire; 'all' runs every registered protocol")
    p.add_argument("--adversary", choices=[*ADVERSARIES, *MALICIOUS, "all"], default="all",
                   help="who attacks: the eavesdropper on the wire, the curious compute server, "
                        "the colluding servers, or all of those (one row per protocol and "
                        "adversary); malicious-server (FSHA: it sends the owner hijacking "
                        "gradients; secret-shared: server 0 alone) and "
                        "malicious-colluding-servers (both, pooling shares) run on their own")
    p.add_argument("--aux", choices=AUX_CHOICES, default="letters",  # checked against the data
                   help="the attacker's auxiliary data for querying the owner's oracle")
    p.add_argument("--aux-size", type=_positive(int, "--aux-size", 100_000), default=6000,
                   help="auxiliary images the attacker renders/queries (mnist-holdout: all)")
    p.add_argument("--model", default="mlp",
                   help=f"the split network: {', '.join(BUILTINS)}, or package.module:function "
                        "returning a SplitNetwork or (nn.Sequential, cut)")
    p.add_argument("--cut", default=None,
                   help="the layer the owner's part ends with (default: the model's own); "
                        "--list-cuts shows them")
    p.add_argument("--topology", choices=["vanilla", "u-shaped"], default="vanilla",
                   help="vanilla: the server computes the loss (the owner sends its labels); "
                        "u-shaped: the owner keeps the last layers and its labels, the server "
                        "runs the middle (every protocol; secret-shared: on shares)")
    p.add_argument("--tail-cut", default=None,
                   help="u-shaped: the last layer of the server's middle; the owner's tail is "
                        "every layer after it (default: the final layer, the Linear to the "
                        "logits: fc3 for mlp and cnn)")
    p.add_argument("--list-cuts", action="store_true",
                   help="print the model's cut points, one per line with the cut's shape")
    p.add_argument("--dataset", default="mnist-small", type=_dataset,
                   help=f"target data: {', '.join(DATASETS)}, or npz:PATH (x, y arrays)")
    p.add_argument("--train-size", type=_positive(int, "--train-size", 10**7), default=None,
                   help="keep a seeded subset of this many training images (real datasets "
                        "are large for 2 CPU cores); default: all")
    p.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    p.add_argument("--download", action="store_true",
                   help="allow torchvision to download --dataset mnist-full / --aux emnist-letters")
    p.add_argument("--epochs", type=_positive(int, "--epochs", 1000), default=10)
    p.add_argument("--attack-epochs", type=_positive(int, "--attack-epochs", 1000), default=20)
    p.add_argument("--batch-size", type=_positive(int, "--batch-size", 4096), default=64)
    p.add_argument("--lr", type=_positive(float, "--lr", 100.0), default=None,
                   help="SGD learning rate (default: the model's: 0.1; cnn 0.05)")
    p.add_argument("--fsha-warmup", type=_positive(int, "--fsha-warmup", 100_000),
                   default=None, help="--adversary malicious-server: the autoencoder's steps "
                   "on its public data before training (default 500)")
    p.add_argument("--fsha-pilot", choices=list(PILOTS), default=DEFAULT_PILOT,
                   help="--adversary malicious-server: which FSHA. "
                        + "; ".join(f"{c.name}: {c.about}" for c in PILOTS.values()))
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
                        "on the softmax answers), unsplit (UnSplit: a clone of the first part "
                        "fitted with the inputs, from its architecture alone: no queries, no "
                        "aux data, no weights), or all (one row per rung)")
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
    p.add_argument("--one-protocol-at-a-time", action="store_true",
                   help="on Ray, run the protocols one after another (default: the two-server "
                        "protocols run beside the one-server ones, which leave a core idle); "
                        "each protocol's seconds are then its own alone")
    p.add_argument("--quiet", action="store_true", help="no progress bars, only the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for problem in _flag_problems(args):
        parser.error(problem)
    if args.list_cuts:
        return guarded(parser, list_cuts, args)
    return guarded(parser, run, args)


def _flag_problems(args: argparse.Namespace) -> list[str]:
    """Range checks argparse's types cannot express, as one line each."""
    checks = [
        (not 0 <= args.seed < 2**40, "--seed must be in 0..2^40-1"),
        (args.snaplen != 0 and not 64 <= args.snaplen <= 2**26,
         "--snaplen must be 0 (everything) or 64..67108864"),
        (not 8 <= args.frac_bits <= 24,
         "--frac-bits must be in 8..24 (products need 2*frac_bits + headroom < 63)"),
        (args.clients > 10_000, "--clients must be <= 10000"),
        (not 0 <= args.turn_batches <= 10**6,
         "--turn-batches must be in 0..1000000 (0: a whole shard per turn)"),
        (args.resume is not None and args.protocol == "all",
         "--resume continues one run: give --protocol plaintext or encrypted"),
        (args.tail_cut is not None and args.topology != "u-shaped",
         "--tail-cut needs --topology u-shaped (a vanilla split has no tail)"),
        (args.topology == "u-shaped" and args.attack == "output",
         "--attack output needs --topology vanilla: under u-shaped the outputs never leave "
         "the owner's tail"),
    ]
    problems = [text for bad, text in checks if bad]
    if not problems:
        try:
            from defences.spec import build_defences

            shield = build_defences(args.defence)
            if shield.label_defences and args.topology != "u-shaped":
                problems.append(f"--defence {shield.label_defences[0]} perturbs the gradient a "
                                "u-shaped owner sends back: it needs --topology u-shaped")
        except SplitWireError as exc:
            problems.append(str(exc))
    return problems


def list_cuts(args: argparse.Namespace) -> int:
    from actors.nets.zoo import cuts, parse_model

    for net in cuts(parse_model(args.model)):
        print(f"{net.cut}\t{'x'.join(map(str, net.cut_shape))}")
    return 0


def guarded(parser: argparse.ArgumentParser, run_fn, args: argparse.Namespace) -> int:
    """Run a CLI's body; any SplitWireError is one line on stderr and exit code 2."""
    try:
        return run_fn(args)
    except SplitWireError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2


def options_from(args: argparse.Namespace) -> Any:
    """The CLI's flags as the Python entry point's options."""
    from actors.api import LabOptions
    from actors.lab import ADVERSARIES
    from attack.ladder import ATTACKS

    return LabOptions(
        model=args.model, cut=args.cut, topology=args.topology, tail_cut=args.tail_cut,
        dataset=args.dataset, data_dir=args.data_dir,
        download=args.download, train_size=args.train_size,
        protocols=() if args.protocol == "all" else (args.protocol,),
        adversaries=ADVERSARIES if args.adversary == "all" else (args.adversary,),
        attacks=tuple(ATTACKS) if args.attack == "all" else (args.attack,),
        aux=args.aux, aux_size=args.aux_size, epochs=args.epochs,
        attack_epochs=args.attack_epochs, batch_size=args.batch_size, lr=args.lr,
        clients=args.clients, partition=args.partition, schedule=args.schedule,
        turn_batches=args.turn_batches or None, owner_actors=args.owner_actors,
        placement=args.placement, data_plane=args.data_plane, chaos=tuple(args.chaos),
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        fsha_warmup=args.fsha_warmup, fsha_pilot=args.fsha_pilot,
        defences=tuple(args.defence), frac_bits=args.frac_bits,
        reveal_model=args.reveal_model, channel_encryption=not args.no_channel_encryption,
        tap=args.tap, snaplen=args.snaplen, seed=args.seed, out=args.out,
        address=args.address, backend=args.backend, quiet=args.quiet,
        overlap_protocols=not args.one_protocol_at_a_time)


def run(args: argparse.Namespace) -> int:
    # Heavy imports only after the flags are known to be good: --help and errors stay instant.
    from tqdm import tqdm

    from actors import report
    from actors.api import run_lab

    t_start = time.perf_counter()
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SplitWireError(f"--out {out}: cannot create directory ({exc.strerror})") from None
    if args.capture:
        _check_capture_path(args.capture)
    options = options_from(args)
    n_protocols = 1 if args.protocol != "all" else len(codec_names())

    def progress(protocol: str, epochs: int) -> Any:
        return tqdm(total=epochs, desc=f"{protocol}: training", unit="epoch",
                    disable=args.quiet, leave=False)

    def capture(protocol: str, backend: Any) -> None:
        if args.capture:
            path = _capture_path(args.capture, protocol, n_protocols)
            n = _write_capture(backend, path)
            if not args.quiet:
                print(f"captured {n} frames -> {path}", flush=True)

    lab = run_lab(options, progress=progress, after_protocol=capture)
    lab.config = {k: _jsonable(v) for k, v in vars(args).items()}
    report.write_json(out / "results.json", lab)
    report.write_figure(out / "reconstructions.png", lab.runs)
    print(report.table(lab.runs))
    print(f"wrote {out / 'results.json'} and {out / 'reconstructions.png'} "
          f"in {time.perf_counter() - t_start:.1f} s", flush=True)
    return 0


def _jsonable(value: Any) -> Any:
    """A flag's value as results.json records it (parsed specs as their flag text)."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _check_capture_path(text: str) -> None:
    capture = Path(text)
    if capture.is_dir() or not capture.resolve().parent.is_dir():
        raise SplitWireError(f"--capture {text}: not a file in an existing directory")
    if not os.access(capture.resolve().parent, os.W_OK):
        raise SplitWireError(f"--capture {text}: directory is not writable")


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
