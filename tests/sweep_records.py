"""Synthetic sweep records shaped like a default sweep: for plot and table tests."""

from __future__ import annotations

import numpy as np

ATTACKS = ("mlp", "conv", "whitebox", "whitebox-conv", "output")
#: (family, strength, defence specs, target accuracy): the README's default grid, roughly.
CELLS = [("none", 0.0, [], 0.956)] + [
    ("noise", s, [f"noise:mechanism=laplace,scale={s:g},clip=64"], a)
    for s, a in ((0.5, 0.922), (1.0, 0.86), (2.0, 0.19), (4.0, 0.104))] + [
    ("nopeek", w, [f"nopeek:weight={w:g}"], a) for w, a in ((0.1, 0.956), (0.5, 0.95),
                                                            (1.0, 0.912))] + [
    ("dropout", r, [f"dropout:rate={r:g}"], a) for r, a in ((0.3, 0.93), (0.6, 0.892),
                                                            (0.8, 0.75), (0.9, 0.432))] + [
    ("query-budget", n, [f"query-budget:limit={n}"], 0.956) for n in (10, 100, 1000, 5000)] + [
    ("combined", 1.0, ["noise:mechanism=laplace,scale=0.5,clip=64", "nopeek:weight=1"], 0.89)]


def synthetic_records(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    n = 500
    base = {"mse": 0.06, "psnr": 12.0, "ssim": 0.25, "validator_accuracy": 0.93,
            "reid": {"pixel_top1": 0.02, "pixel_top5": 0.09, "feature_top1": 0.018,
                     "feature_top5": 0.08, "chance_top1": 1 / n, "chance_top5": 5 / n, "n": n}}
    out = []
    for family, strength, specs, acc in CELLS:
        key = " ".join(specs) or "none"
        run = None
        if family == "noise":
            eps = 128 / strength * 10
            run = {"epsilon": eps, "delta": 0.0, "releases": 10, "meaningful": eps <= 10}
        for attack in ATTACKS:
            val = min(1.0, acc * rng.uniform(0.85, 1.02))
            ssim = rng.uniform(0.2, 0.85) * (acc if family != "noise" else acc ** 2)
            top1 = float(np.clip(rng.uniform(0, 0.9) * (ssim - 0.2) * 2, 0, 1))
            reid = dict(base["reid"], pixel_top1=top1, pixel_top5=min(1, top1 * 1.3),
                        feature_top1=top1 * 0.8, feature_top5=min(1, top1))
            out.append({
                "cell": key, "family": family, "strength": strength, "defences": specs,
                "cut": None, "attack": attack, "aux": "letters", "target_accuracy": acc,
                "attack_metrics": {"mse": 0.03, "psnr": 15.0, "ssim": ssim,
                                   "validator_accuracy": val},
                "queries_used": 0, "epsilon": None, "epsilon_run": run,
                "reid": reid, "label_only": base,
                "excess": {"ssim_gain": ssim - 0.25, "reid_top1_gain": top1 - 0.02,
                           "reid_top5_gain": min(1, top1 * 1.3) - 0.09},
                "seconds": 1.0})
    return out
