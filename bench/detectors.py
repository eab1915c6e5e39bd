"""Detector figures: SplitGuard and SplitOut against FSHA and against honest servers.

    python bench/detectors.py [--seeds 5] [--train-size 1000] [--epochs 4] [--out FILE]
                              [--only TEXT] [--fsha-pilot held|trained|own]

Each cell runs the lab in-process (``LocalBackend``: every role an object in this process, the
real wire codec in between) on the plaintext protocol, once per seed:

- ``fsha``: the compute server is the lab's ``--adversary malicious-server`` (FSHA,
  :mod:`actors.malicious`: it answers every batch with the critic's gradient), the owner runs
  one detector; recorded: detected or not, the step, the best SSIM / validator accuracy of the
  hijacker's attack curve up to that step (its decoder on the batches it was sent), and what it
  rebuilds of the private test set from the first part as it stood when training stopped. One
  ``fsha`` cell without a detector gives what the hijacker reaches by the end of the run;
- ``honest``: the honest server, the owner with a detector, alone and beside each of the lab's
  other defences (noise, nopeek, dropout): any detection is a false positive;
- ``baseline``: the honest server without a detector (the same defences): the detector's cost
  is the accuracy and the seconds of training it adds over this.

Prints a table and writes JSON (``--out``). Wall times are of one process on one thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors import hijack_lab, lab  # noqa: E402
from actors.backend import LocalBackend  # noqa: E402
from actors.data import TargetData, load_target  # noqa: E402
from actors.fsha_pilot import DEFAULT_PILOT, PILOTS, PilotChoice  # noqa: E402
from actors.malicious import MALICIOUS_SERVER  # noqa: E402
from actors.nets.zoo import ModelSpec, build_network  # noqa: E402
from actors.owner import DataOwner  # noqa: E402
from actors.owner_host import OwnerHost  # noqa: E402
from attack import metrics, validator  # noqa: E402
from attack.auxiliary import load_aux  # noqa: E402

DETECTORS = {"splitguard": "splitguard:seed={seed}", "splitout": "splitout:seed={seed}"}
#: The lab's other defences, each switched on beside a detector for the false-positive cells.
OTHER_DEFENCES = {
    "none": (),
    "noise": ("noise:mechanism=laplace,scale=0.2,clip=5",),
    "nopeek": ("nopeek:weight=0.5",),
    "dropout": ("dropout:rate=0.2,seed={seed}",),
}


def run_one(data: TargetData, aux: np.ndarray, judge: torch.nn.Module, *, server: str,
            defences: tuple[str, ...], seed: int, epochs: int,
            fsha_settings: dict[str, Any] | None = None,
            pilot: PilotChoice = PILOTS[DEFAULT_PILOT]) -> dict[str, Any]:
    """One training run in-process; detection, accuracy, seconds, and FSHA's reconstruction.
    ``pilot`` is the ``--fsha-pilot`` choice; ``fsha_settings`` override the lab's FSHA
    settings (``actors.malicious.LAB_SETTINGS``) after it."""
    net = build_network(ModelSpec("mlp"), seed, data.input_shape, data.classes)
    adversaries = (MALICIOUS_SERVER,) if server == "fsha" else ("eavesdropper",)
    cfg = lab.RunConfig(protocol="plaintext", epochs=epochs, seed=seed,
                        adversaries=adversaries, defences=defences,
                        train=lab.TrainConfig(seed=seed))
    backend = LocalBackend()
    cast = lab.start_roles(backend, cfg, net, data, secrets.randbits(64))
    backend.connect()
    lab.pin_identities(backend, cast.parties)
    n_steps = epochs * -(-len(cast.train_shards[0]) // cfg.train.batch_size)
    # An honest run is not armed (hijack_lab.arm returns at once).
    hijack_lab.arm(backend, cfg.adversaries, cast.servers, aux, seed, n_steps, fsha_settings,
                   pilot=pilot)
    t0 = time.perf_counter()
    _, _, _, steps, detection = lab.train(backend, cfg, cast, net)
    seconds = time.perf_counter() - t0
    reports = [r for rs in backend.call_all([(h, OwnerHost.each, (DataOwner.infer,))
                                             for h in cast.hosts]) for r in rs]
    row: dict[str, Any] = {
        "seed": seed, "detected": detection is not None,
        "detector": None if detection is None else detection["detector"],
        "step": None if detection is None else detection["step"],
        "score": None if detection is None else detection["score"],
        "reason": None if detection is None else detection["reason"],
        "steps_planned": steps, "train_seconds": seconds,
        "target_accuracy": sum(r.correct for r in reports) / sum(r.examples for r in reports)}
    if server == "fsha":
        owner = backend.party(cast.owners[0])
        x = torch.from_numpy(data.test.x)
        with torch.no_grad():
            h = owner.defences.apply(owner.model(x)).numpy()
        recon = backend.roles[lab.SERVER].fsha.reconstruct(h)
        row["fsha_ssim"] = metrics.ssim(recon, data.test.x)
        row["fsha_validator_accuracy"] = validator.accuracy(judge, recon, data.test.y)
        # The attack curve (its decoder on the batches it was sent) up to the stop.
        curve = hijack_lab.score_curve(backend, cfg.adversaries, cast.servers, data,
                                       cast.train_shards[0], seed, cfg.train.batch_size, judge)
        row["fsha_curve"] = curve
        row["fsha_best_ssim"] = max((p["ssim"] for p in curve), default=None)
        row["fsha_best_validator"] = max((p["validator_accuracy"] for p in curve), default=None)
    return row


def cells(seeds: int) -> list[tuple[str, str, str, str]]:
    """(cell name, server, detector or '', other defence) for every cell of the bench."""
    out = [(f"fsha / {d}", "fsha", d, "none") for d in DETECTORS]
    out.append(("fsha / no detector", "fsha", "", "none"))
    for other in OTHER_DEFENCES:
        out += [(f"honest / {d} / {other}", "honest", d, other) for d in DETECTORS]
        out.append((f"honest / no detector / {other}", "honest", "", other))
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [r["step"] for r in rows if r["detected"]]
    out: dict[str, Any] = {
        "runs": len(rows), "detection_rate": sum(r["detected"] for r in rows) / len(rows),
        "median_step": statistics.median(steps) if steps else None,
        "max_step": max(steps) if steps else None,
        "target_accuracy": statistics.mean(r["target_accuracy"] for r in rows),
        "train_seconds": statistics.mean(r["train_seconds"] for r in rows)}
    if "fsha_ssim" in rows[0]:
        out["fsha_ssim_mean"] = statistics.mean(r["fsha_ssim"] for r in rows)
        out["fsha_ssim_max"] = max(r["fsha_ssim"] for r in rows)
        out["fsha_validator_mean"] = statistics.mean(r["fsha_validator_accuracy"] for r in rows)
        best = [r["fsha_best_ssim"] for r in rows if r["fsha_best_ssim"] is not None]
        out["fsha_curve_best_ssim_max"] = max(best) if best else None
        best = [r["fsha_best_validator"] for r in rows if r["fsha_best_validator"] is not None]
        out["fsha_curve_best_validator_max"] = max(best) if best else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--aux-size", type=int, default=2000)
    p.add_argument("--only", default=None, help="run only cells whose name contains this")
    p.add_argument("--out", default="detectors.json")
    p.add_argument("--fsha-pilot", choices=list(PILOTS), default=DEFAULT_PILOT,
                   help="which FSHA the malicious server runs (the lab's flag of that name)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_target(seed=0, n_train=args.train_size)
    aux = np.ascontiguousarray(load_aux("letters", args.aux_size, 0, data.input_shape))
    judge = validator.train_validator(data.train.x, data.train.y, data.classes, seed=0)
    results: dict[str, Any] = {"config": vars(args), "machine": platform.processor() or
                               platform.machine(), "cells": {}}
    print(f"{'cell':38} {'detect':>7} {'step med/max':>12} {'acc':>6} {'train s':>8} "
          f"{'FSHA SSIM':>9} {'FSHA val':>8} {'best SSIM':>9} {'best val':>8}", flush=True)
    for name, server, detector, other in cells(args.seeds):
        if args.only and args.only not in name:
            continue
        rows = []
        for seed in range(args.seeds):
            defences = tuple(d.format(seed=seed) for d in OTHER_DEFENCES[other])
            if detector:
                defences += (DETECTORS[detector].format(seed=seed),)
            rows.append(run_one(data, aux, judge, server=server, defences=defences, seed=seed,
                                epochs=args.epochs, pilot=PILOTS[args.fsha_pilot]))
        s = summarise(rows)
        results["cells"][name] = {"summary": s, "runs": rows}
        step = (f"{s['median_step']}/{s['max_step']}" if s["median_step"] is not None
                else "-")
        ssim = f"{s['fsha_ssim_mean']:.3f}" if "fsha_ssim_mean" in s else "-"
        val = f"{s['fsha_validator_mean']:.3f}" if "fsha_validator_mean" in s else "-"
        best = (f"{s['fsha_curve_best_ssim_max']:.3f}"
                if s.get("fsha_curve_best_ssim_max") is not None else "-")
        best_val = (f"{s['fsha_curve_best_validator_max']:.3f}"
                    if s.get("fsha_curve_best_validator_max") is not None else "-")
        print(f"{name:38} {s['detection_rate']:7.2f} {step:>12} {s['target_accuracy']:6.3f} "
              f"{s['train_seconds']:8.2f} {ssim:>9} {val:>8} {best:>9} {best_val:>8}",
              flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
