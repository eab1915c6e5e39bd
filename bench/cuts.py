"""Where to split: the attack ladder at every cut point of He et al.'s MNIST CNN.

    python bench/cuts.py [--cuts conv1 pool1 relu2 pool2] [--aux letters] [--aux-size 2000]
                         [--rungs mlp conv whitebox] [--encrypted-rungs conv]

For each cut it runs ``python -m actors.simulate --model cnn --cut C --protocol plaintext
--adversary eavesdropper --attack R`` for the rungs R, and the encrypted protocol with
``--encrypted-rungs`` (through the Python entry point, one process), and prints SSIM / PSNR /
validator accuracy / re-identification per cut and rung, beside He, Zhang & Lee's Tables 3
and 4 (ACSAC 2019: white-box rMLE and the black-box inverse network at conv1 and ReLU2).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

PUBLISHED = {  # (cut, rung) -> He et al. 2019, PSNR dB / SSIM
    ("conv1", "whitebox"): "39.69 / .9969 (Table 3)",
    ("relu2", "whitebox"): "15.10 / .5998 (Table 3)",
    ("conv1", "mlp"): "40.72 / .9950 (Table 4, same distribution)",
    ("relu2", "mlp"): "20.81 / .8046 (Table 4, same distribution)",
}
RUNGS = ("mlp", "conv", "whitebox")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cuts", nargs="+", default=["conv1", "pool1", "relu2", "pool2"])
    p.add_argument("--rungs", nargs="+", default=list(RUNGS))
    p.add_argument("--encrypted-rungs", nargs="*", default=["conv"])
    p.add_argument("--aux", default="letters")
    p.add_argument("--aux-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--attack-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--json", default=None, help="also write every run's record here")
    args = p.parse_args(argv)

    from actors.api import LabOptions, run_lab

    records = []
    plan = [("plaintext", tuple(args.rungs))]
    if args.encrypted_rungs:
        plan.append(("encrypted", tuple(args.encrypted_rungs)))
    for cut in args.cuts:
        t = time.perf_counter()
        for protocol, rungs in plan:
            report = run_lab(LabOptions(
                model="cnn", cut=cut, protocols=(protocol,), adversaries=("eavesdropper",),
                attacks=rungs, aux=args.aux, aux_size=args.aux_size, epochs=args.epochs,
                attack_epochs=args.attack_epochs, seed=args.seed, backend=args.backend))
            for r in report.runs:
                records.append({"cut": cut, "cut_shape": list(report.network.cut_shape),
                                **r.to_json()})
        print(f"# {cut} {report.network.cut_shape}: {time.perf_counter() - t:.0f} s",
              file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    print(f"# {platform.machine()} {platform.processor() or ''}, {time.strftime('%Y-%m-%d')}, "
          f"seed {args.seed}, aux {args.aux}, {args.epochs} epochs, eavesdropper")
    print("| cut | cut shape | protocol | target acc | rung | SSIM | PSNR dB | validator | "
          "re-id@1 (+ over label-only) | He et al. 2019 PSNR / SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        shape = "x".join(map(str, r["cut_shape"]))
        a = r["attack"]
        published = PUBLISHED.get((r["cut"], r["attack_method"]), "") if (
            r["protocol"] == "plaintext") else ""
        print(f"| {r['cut']} | {shape} | {r['protocol']} | {r['target_accuracy']:.1%} | "
              f"{r['attack_method']} | {a['ssim']:.3f} | {a['psnr']:.2f} | "
              f"{a['validator_accuracy']:.1%} | {_reid(r)} | {published} |")
    return 0


def _reid(r: dict) -> str:
    top = max(r["reid"]["pixel_top1"], r["reid"]["feature_top1"] or 0.0)
    return f"{top:.1%} ({100 * r['excess']['reid_top1_gain']:+.1f})"


if __name__ == "__main__":
    sys.exit(main())
