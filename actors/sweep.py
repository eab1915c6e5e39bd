"""``python -m actors.sweep``: defences against the attack ladder, on one privacy-utility plot.

Each *cell* is one defence setting (or none, the baseline): the owner trains with it, then
every attack of ``--attacks`` inverts what the eavesdropper intercepted on a plaintext wire.
Cells run as parallel Ray tasks (``--address`` joins a cluster), finished cells are written to
``OUT/sweep.json`` as they complete, and a rerun skips every cell already there (resumable).
``OUT/privacy_utility.png`` plots target accuracy against the *strongest* attack's validator
accuracy, SSIM and re-identification beyond the label-only baseline, one curve per defence
(:mod:`actors.sweep_plot`).

A record is one (cell, attack): the cell's fields, then from the lab's ``RunResult.to_json()``
``target_accuracy``, ``attack_metrics`` (mse, psnr, ssim, validator_accuracy), ``queries_used``,
``epsilon`` (per query), and (issue 15):

* ``reid``: ``pixel_top1``, ``pixel_top5``, ``feature_top1``, ``feature_top5`` (fractions of the
  ``n`` private test images whose reconstruction's nearest 1 / 5 images include the true one),
  ``chance_top1`` = 1/n, ``chance_top5`` = 5/n (:func:`attack.reident.reidentify`);
* ``label_only``: the label-only baseline (each test image's class-mean training image) scored
  with mse, psnr, ssim, validator_accuracy and its own ``reid`` block;
* ``excess``: attack minus label-only, ``ssim_gain``, ``reid_top1_gain``, ``reid_top5_gain``
  (each side's better space), per-space gains, ... (:func:`attack.baselines.excess`);
* ``epsilon_run``: the whole run's ``epsilon``, ``delta``, ``releases`` and ``meaningful``
  for one example (:func:`defences.accounting.run_epsilon`), ``None`` without noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.simulate import guarded
from attack.reident import best_top
from protocol.errors import SplitWireError

SCHEMA = 2  # 2: records carry reid, label_only, excess, epsilon_run and cut (issue 15)
#: Issue 6's frontier goal: target accuracy at least this ...
GOAL_ACCURACY = 0.90
#: ... while the strongest attack's validator accuracy is at most this.
GOAL_VALIDATOR = 0.30
#: Issue 15's restated goal: at that accuracy, the strongest rung re-identifies (top-1) at most
#: this much (0.05 = 5 points) more than the label-only baseline.
GOAL_REID_EXCESS = 0.05

#: What "strongest" can be judged by: a record's value, and the metric that breaks ties.
METRICS: dict[str, tuple[str, str]] = {
    "validator_accuracy": ("validator accuracy", "ssim"),
    "ssim": ("SSIM", "validator_accuracy"),
    "reid_excess": ("re-identification top-1 beyond label-only", "ssim"),
}


@dataclass(frozen=True)
class Cell:
    family: str  # "none", "noise", "nopeek", "dropout", "query-budget", "combined"
    strength: float
    defences: tuple[str, ...]  # canonical --defence specs
    cut: str | None = None  # layer the network is split after (None: the network's default)

    @property
    def key(self) -> str:
        base = " ".join(self.defences) or "none"
        return base if self.cut is None else f"{base} cut={self.cut}"


def grid(args: argparse.Namespace) -> list[Cell]:
    """Every defence setting, at every cut point of ``--cuts`` (where to split is a defence)."""
    cells = _defence_grid(args)
    if not args.cuts:
        return cells
    return [Cell(c.family, c.strength, c.defences, cut) for cut in args.cuts for c in cells]


def _defence_grid(args: argparse.Namespace) -> list[Cell]:
    cells = [Cell("none", 0.0, ())]
    for s in args.noise_scales:
        cells.append(Cell("noise", s, (
            f"noise:mechanism={args.noise_mechanism},scale={s:g},clip={args.noise_clip:g}",)))
    cells += [Cell("nopeek", w, (f"nopeek:weight={w:g}",)) for w in args.nopeek_weights]
    cells += [Cell("dropout", r, (f"dropout:rate={r:g}",)) for r in args.dropout_rates]
    cells += [Cell("query-budget", n, (f"query-budget:limit={int(n)}",)) for n in args.budgets]
    # Label defences (u-shaped only): the gradient the owner returns to the middle.
    cells += [Cell("max-norm", s, (f"max-norm:scale={s:g}",)) for s in args.max_norm_scales]
    cells += [Cell("grad-noise", r, (f"grad-noise:ratio={r:g}",))
              for r in args.grad_noise_ratios]
    cells += [Cell("marvell", s, (f"marvell:scale={s:g}",)) for s in args.marvell_scales]
    # Defences stacked in one cell (as Titcombe et al. pair noise with NoPeek): specs joined
    # by "+"; the "strength" axis of their curve is just their order on the command line.
    from defences.spec import parse_defence

    cells += [Cell("combined", float(k), tuple(str(parse_defence(t)) for t in text.split("+")))
              for k, text in enumerate(args.combined, start=1)]
    return cells


def run_cell(cell: Cell, settings: dict[str, Any], data: Any, aux: Any,
             judge: Any) -> list[dict[str, Any]]:
    """Train with the cell's defence, run every attack; one record per attack."""
    import torch

    from actors.backend import LocalBackend
    from actors.lab import RunConfig, run_protocol
    from actors.nets.zoo import build_network, default_lr, parse_model
    from actors.owner import TrainConfig

    torch.set_num_threads(1)
    # Where to split is itself a defence: each cell may cut the network elsewhere.
    net = build_network(parse_model(settings.get("model", "mlp"), cell.cut,
                                    settings.get("topology", "vanilla")), settings["seed"],
                        data.input_shape, data.classes)
    lr = settings["lr"] if settings.get("lr") is not None else default_lr(net)
    train = TrainConfig(lr=lr, seed=settings["seed"])
    cfg = RunConfig(train=train, protocol="plaintext", aux=settings["aux"],
                    epochs=settings["epochs"],
                    attack_epochs=settings["attack_epochs"], seed=settings["seed"],
                    adversaries=("eavesdropper",), defences=cell.defences,
                    attacks=tuple(settings["attacks"]))
    t0 = time.perf_counter()
    results = run_protocol(LocalBackend(), cfg, data, aux, lambda: judge, net=net)
    records = []
    for r in results:
        doc = r.to_json()
        records.append({
            "cell": cell.key, "family": cell.family, "strength": cell.strength,
            "defences": list(cell.defences), "cut": cell.cut, "attack": r.attack_method,
            "aux": r.aux, "target_accuracy": r.target_accuracy,
            "attack_metrics": r.attack.to_dict(), "queries_used": r.queries_used,
            "epsilon": doc["epsilon"],
            "topology": r.topology, "labels": r.label_leak,
            **_instance_fields(doc, r, cell, settings, data, judge),
            "seconds": time.perf_counter() - t0,
        })
    return records


def _instance_fields(doc: dict[str, Any], r: Any, cell: Cell, settings: dict[str, Any],
                     data: Any, judge: Any) -> dict[str, Any]:
    """``reid``, ``label_only``, ``excess`` and ``epsilon_run``: the lab's, or computed here
    from the run's reconstructions where this lab does not report them yet."""
    keys = ("reid", "label_only", "excess", "epsilon_run")
    if all(k in doc for k in keys):
        return {k: doc[k] for k in keys}
    from attack import validator
    from attack.baselines import instance_report
    from defences.accounting import run_epsilon
    from defences.spec import build_defences, parse_defence

    # The validator's penultimate features, where attack.validator offers them.
    embed_fn = getattr(validator, "embed", None)
    embed = None if embed_fn is None else (lambda x: embed_fn(judge, x))
    out = instance_report(r.reconstructions, r.originals, r.labels, data.train.x, data.train.y,
                          classify=lambda x, y: validator.accuracy(judge, x, y), embed=embed)
    noise = build_defences(parse_defence(t) for t in cell.defences).noise
    out["epsilon_run"] = run_epsilon(noise, settings["epochs"], n_examples=len(data.train.y))
    return {k: doc.get(k, out[k]) for k in keys}


def load(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SplitWireError(f"{path}: not a readable sweep file ({exc})") from None
    if doc.get("schema") != SCHEMA:
        raise SplitWireError(f"{path} was written by another version of the sweep (schema "
                             f"{doc.get('schema')}, this is {SCHEMA}); use another --out")
    if doc.get("settings") != settings:
        raise SplitWireError(f"{path} was written with other settings; use another --out")
    return list(doc.get("records", []))


def save(path: Path, settings: dict[str, Any], records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".json.tmp")  # write then rename: a crash never leaves half a file
    tmp.write_text(json.dumps({"schema": SCHEMA, "settings": settings, "records": records},
                              indent=1) + "\n")
    os.replace(tmp, path)


def black_box() -> tuple[str, ...]:
    """Rungs that need only the oracle and auxiliary data, not the first part's weights."""
    from attack.ladder import ATTACKS, needs_weights

    return tuple(a for a in ATTACKS if not needs_weights(a))


def value(r: dict[str, Any], metric: str) -> float | None:
    """A record's ``metric`` (a key of :data:`METRICS`); ``None`` where it does not have it."""
    if metric == "reid_excess":
        return (r.get("excess") or {}).get("reid_top1_gain")
    return r["attack_metrics"][metric]


def strongest(records: list[dict[str, Any]], among: tuple[str, ...] | None = None,
              metric: str = "validator_accuracy") -> dict[str, dict[str, Any]]:
    """Per cell, the attack with the highest ``metric`` (ties broken by :data:`METRICS`'
    second metric), out of every rung or only those in ``among``; records without the metric
    are skipped."""
    other = METRICS[metric][1]
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if (among is not None and r["attack"] not in among) or value(r, metric) is None:
            continue
        cur = best.get(r["cell"])
        if cur is None or ((value(r, metric), value(r, other))
                           > (value(cur, metric), value(cur, other))):
            best[r["cell"]] = r
    return best


def meets_goal(r: dict[str, Any], min_accuracy: float = GOAL_ACCURACY,
               max_validator: float = GOAL_VALIDATOR) -> bool:
    """Issue 6's frontier goal for one (cell, attack) record."""
    return (r["target_accuracy"] >= min_accuracy
            and r["attack_metrics"]["validator_accuracy"] <= max_validator)


def meets_reid_goal(r: dict[str, Any], min_accuracy: float = GOAL_ACCURACY,
                    max_excess: float = GOAL_REID_EXCESS) -> bool:
    """Issue 15's restated goal for one (cell, attack) record: useful, and re-identifying at
    most ``max_excess`` more than the label-only baseline (False where it is not measured)."""
    gain = value(r, "reid_excess")
    return r["target_accuracy"] >= min_accuracy and gain is not None and gain <= max_excess


def build_parser() -> argparse.ArgumentParser:
    from actors.simulate import _Parser  # one line and exit 2 on bad flags, as simulate
    from attack.auxiliary import AUX_CHOICES
    from attack.ladder import ATTACKS

    p = _Parser(prog="python -m actors.sweep", description=__doc__,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--noise-scales", type=float, nargs="*", default=[0.5, 1.0, 2.0, 4.0])
    p.add_argument("--noise-mechanism", choices=["laplace", "gaussian"], default="laplace")
    # Trained cut-layer rows have a median L1 norm of about 68 (L2 about 7.3): clipping at 64
    # leaves most rows as they are while bounding the sensitivity the epsilon is computed from.
    p.add_argument("--noise-clip", type=float, default=64.0)
    p.add_argument("--nopeek-weights", type=float, nargs="*", default=[0.1, 0.5, 1.0])
    p.add_argument("--dropout-rates", type=float, nargs="*", default=[0.3, 0.6, 0.8, 0.9])
    p.add_argument("--budgets", type=int, nargs="*", default=[100, 1000, 5000])
    p.add_argument("--combined", nargs="*", default=[], metavar="SPEC+SPEC",
                   help="cells that stack defences, e.g. "
                        "noise:mechanism=laplace,scale=0.5,clip=64+nopeek:weight=1")
    p.add_argument("--topology", choices=["vanilla", "u-shaped"], default="vanilla",
                   help="u-shaped: the owner keeps the tail and the labels; the label defences "
                        "below need it, and the plot gains a label-leakage panel")
    p.add_argument("--max-norm-scales", type=float, nargs="*", default=[],
                   help="u-shaped: max-norm label defence cells (1 = Li et al.'s)")
    p.add_argument("--grad-noise-ratios", type=float, nargs="*", default=[],
                   help="u-shaped: isotropic gradient-noise cells (ratio of the batch's max norm)")
    p.add_argument("--marvell-scales", type=float, nargs="*", default=[],
                   help="u-shaped: Marvell cells (power = scale x the class-mean gap squared)")
    p.add_argument("--model", default="mlp",
                   help="the split network (as python -m actors.simulate --model)")
    p.add_argument("--cuts", nargs="+", default=None, metavar="LAYER",
                   help="grid over cut points too: every defence setting at each named layer "
                        "(default: the network's own cut)")
    p.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    p.add_argument("--aux", choices=AUX_CHOICES, default="letters")
    p.add_argument("--aux-size", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=None,
                   help="the owner's and server's SGD step (default: the model's: 0.1; cnn "
                        "0.05; noisy training may want less)")
    p.add_argument("--attack-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/sweep")
    p.add_argument("--address", default=None, help="join an existing Ray cluster")
    p.add_argument("--parallel", type=int, default=None,
                   help="cells at once (default: the cluster's CPUs)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    numbers = [*args.noise_scales, *args.nopeek_weights, *args.dropout_rates, args.noise_clip,
               *args.max_norm_scales, *args.grad_noise_ratios, *args.marvell_scales]
    if any(not (x > 0 and math.isfinite(x)) for x in numbers):
        parser.error("scales, weights, rates and the clip must be finite and > 0")
    if any(r >= 1 for r in args.dropout_rates) or any(b < 1 for b in args.budgets):
        parser.error("dropout rates must be < 1 and budgets >= 1")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error("--lr must be finite and > 0")
    if min(args.epochs, args.attack_epochs, args.aux_size) < 1:
        parser.error("--epochs, --attack-epochs and --aux-size must be >= 1")
    try:
        from actors.nets.zoo import parse_model

        for cut in args.cuts or [None]:
            parse_model(args.model, cut, args.topology)
        labelled = args.max_norm_scales or args.grad_noise_ratios or args.marvell_scales
        if labelled and args.topology != "u-shaped":
            parser.error("--max-norm-scales, --grad-noise-ratios and --marvell-scales are label "
                         "defences: they need --topology u-shaped")
    except SplitWireError as exc:
        parser.error(str(exc))
    if args.cuts is not None and len(set(args.cuts)) != len(args.cuts):
        parser.error("--cuts names a layer twice")
    return guarded(parser, run, args)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from actors.data import load_target

    # Ray through ray_backend, which sets the loopback-only environment before importing it.
    from actors.ray_backend import init_ray, ray
    from attack.auxiliary import load_aux
    from attack.validator import train_validator_cached
    from defences.spec import build_defences, parse_defence

    cells = grid(args)
    for cell in cells:  # every spec checked before anything runs
        build_defences(parse_defence(t) for t in cell.defences)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"aux": args.aux, "aux_size": args.aux_size, "epochs": args.epochs,
                "lr": args.lr, "attack_epochs": args.attack_epochs, "seed": args.seed,
                "attacks": list(args.attacks), "model": args.model}
    if args.topology != "vanilla":  # only then: older sweep.json files stay resumable
        settings["topology"] = args.topology
    path = out / "sweep.json"
    records = load(path, settings)
    done = {r["cell"] for r in records}
    todo = [c for c in cells if c.key not in done]
    if not args.quiet:
        print(f"sweep: {len(cells)} cells, {len(done & {c.key for c in cells})} already done, "
              f"{len(todo)} to run, attacks {', '.join(args.attacks)}", flush=True)
    if todo:
        init_ray(args.address, quiet=True)
        data = load_target(seed=args.seed)
        aux = load_aux(args.aux, args.aux_size, args.seed, data.input_shape,
                       holdout=data.holdout.x)
        judge = train_validator_cached(data.train.x, data.train.y, data.classes,
                                       seed=args.seed)
        refs = [ray.put(x) for x in (data, aux, judge)]
        task = ray.remote(num_cpus=1)(run_cell)
        pending = {task.remote(c, settings, *refs): c for c in todo}
        bar = tqdm(total=len(todo), desc="sweep", unit="cell", disable=args.quiet)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            pending.pop(ready[0])
            records += ray.get(ready[0])
            save(path, settings, records)  # each finished cell is kept, whatever happens next
            bar.update(1)
        bar.close()
    save(path, settings, records)
    from actors.sweep_plot import plot

    plot(out / "privacy_utility.png", records, order=[c.key for c in cells])
    report(cells, records)
    print(f"wrote {path} and {out / 'privacy_utility.png'}")
    return 0


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{x:.1%}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def run_epsilon_text(r: dict[str, Any]) -> str:
    """The whole-run epsilon for the table: ``-`` without noise, ``*`` when not meaningful."""
    run = r.get("epsilon_run")
    if not run:
        return "-"
    return f"{run['epsilon']:.3g}" + ("" if run["meaningful"] else "*")


def _rows(key: str, picks: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, dict]]:
    """One cell's table rows: each distinct record that is strongest by some criterion, with
    the criteria it wins ("validator, SSIM"), in criterion order."""
    rows: list[tuple[list[str], dict[str, Any]]] = []
    for label, best in picks.items():
        rec = best.get(key)
        if rec is None:
            continue
        same = next((row for row in rows if row[1] is rec), None)
        if same is None:
            rows.append(([label], rec))
        else:
            same[0].append(label)
    return [(", ".join(labels), rec) for labels, rec in rows]


def _baseline_line(records: list[dict[str, Any]]) -> str | None:
    with_base = [r for r in records if r.get("label_only") and r.get("reid")]
    if not with_base:
        return None
    lo, n = with_base[0]["label_only"], with_base[0]["reid"]["n"]
    reid = lo["reid"]
    feature = ("" if reid.get("feature_top1") is None
               else f", feature {_pct(reid['feature_top1'])}")
    return (f"re-id@1: share of the n={n} private test images that are the nearest of all n "
            f"to their reconstruction (pixel or feature space; chance {_pct(1 / n)})\n"
            f"label-only baseline (class-mean image): SSIM {lo['ssim']:.3f}, validator "
            f"{_pct(lo['validator_accuracy'])}, re-id@1 pixel {_pct(reid['pixel_top1'])}"
            f"{feature}; +re-id@1 (points) and +SSIM are the excess over it")


def report(cells: list[Cell], records: list[dict[str, Any]]) -> None:
    """The table: per cell the strongest rung by validator accuracy, by SSIM and by
    re-identification beyond the label-only baseline, and the strongest needing no weights;
    then which cells meet the goals."""
    picks = {"validator": strongest(records), "SSIM": strongest(records, metric="ssim"),
             "re-id": strongest(records, metric="reid_excess"),
             "no weights": strongest(records, black_box())}
    best = picks["validator"]
    shown = [c for c in cells if c.key in best]
    w = max([len(c.key) for c in shown] + [4]) + 2
    line = _baseline_line(records)
    if line:
        print(line)
    print(f"{'cell':<{w}}{'target acc':>11}{'run eps':>11}  {'strongest by':<30}{'attack':<15}"
          f"{'validator':>10}{'SSIM':>7}{'re-id@1':>9}{'+re-id@1':>9}{'+SSIM':>7}")
    for cell in shown:
        for i, (by, r) in enumerate(_rows(cell.key, picks)):
            m, gain = r["attack_metrics"], r.get("excess") or {}
            head = (f"{cell.key:<{w}}{r['target_accuracy']:>11.1%}{run_epsilon_text(r):>11}"
                    if i == 0 else " " * (w + 22))
            top1 = best_top(r["reid"], 1) if r.get("reid") else None
            print(f"{head}  {by:<30}{r['attack']:<15}{m['validator_accuracy']:>10.1%}"
                  f"{m['ssim']:>7.3f}{_pct(top1):>9}{_pct(gain.get('reid_top1_gain'), True):>9}"
                  f"{_num(gain.get('ssim_gain'), '+.3f'):>7}")
    if any(r.get("epsilon_run") and not r["epsilon_run"]["meaningful"] for r in records):
        from defences.accounting import MEANINGFUL_EPSILON

        print(f"run eps: the whole run's epsilon for one example (every release composed); "
              f"* = no meaningful DP (above {MEANINGFUL_EPSILON:g})")
    _goals(cells, picks)


def _goals(cells: list[Cell], picks: dict[str, dict[str, dict[str, Any]]]) -> None:
    best, blind, reid = picks["validator"], picks["no weights"], picks["re-id"]
    goal = (f"target accuracy >= {GOAL_ACCURACY:.0%} with validator accuracy <= "
            f"{GOAL_VALIDATOR:.0%}")
    # In grid order (records arrive in completion order), and only this grid's cells.
    met = [c.key for c in cells if c.key in best and meets_goal(best[c.key])]
    met_blind = [c.key for c in cells if c.key in blind and meets_goal(blind[c.key])]
    print(f"goal ({goal}) under the strongest attack: "
          + (", ".join(met) if met else "met by no cell"))
    print("the same goal against adversaries without the first part's weights: "
          + (", ".join(met_blind) if met_blind else "met by no cell"))
    measured = [c for c in cells if c.key in reid]
    if not measured:
        return
    restated = (f"target accuracy >= {GOAL_ACCURACY:.0%} with the strongest rung's top-1 "
                f"re-identification <= {100 * GOAL_REID_EXCESS:g} points above label-only")
    met_reid = [c.key for c in measured if meets_reid_goal(reid[c.key])]
    print(f"restated goal ({restated}): " + (", ".join(met_reid) if met_reid else
                                              "met by no cell" + _closest(measured, reid)))


def _closest(cells: list[Cell], reid: dict[str, dict[str, Any]]) -> str:
    """Where the restated goal is missed: the most private useful cell and the most useful
    private one, with by how much each misses."""
    useful = [c for c in cells if reid[c.key]["target_accuracy"] >= GOAL_ACCURACY]
    private = [c for c in cells if value(reid[c.key], "reid_excess") <= GOAL_REID_EXCESS]
    parts = []
    if useful:
        c = min(useful, key=lambda c: value(reid[c.key], "reid_excess"))
        gain = value(reid[c.key], "reid_excess")
        parts.append(f"most private at >= {GOAL_ACCURACY:.0%}: {c.key} ({reid[c.key]['attack']}"
                     f" +{100 * gain:.1f} points, misses by {100 * (gain - GOAL_REID_EXCESS):.1f})")
    if private:
        c = max(private, key=lambda c: reid[c.key]["target_accuracy"])
        acc = reid[c.key]["target_accuracy"]
        parts.append(f"most useful within {100 * GOAL_REID_EXCESS:g} points: {c.key} "
                     f"(accuracy {acc:.1%}, misses by {100 * (GOAL_ACCURACY - acc):.1f} points)")
    return "; closest: " + "; ".join(parts) if parts else ""


if __name__ == "__main__":
    sys.exit(main())
