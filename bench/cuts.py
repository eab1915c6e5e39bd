"""Where to split: the attack ladder at every cut point of He et al.'s MNIST CNN.

    python bench/cuts.py [--cuts conv1 relu1 pool1 conv2 relu2] [--aux holdout]
                         [--protocols plaintext encrypted] [--backend local|ray]

For each cut it runs ``python -m actors.simulate --model cnn --cut C --protocol P
--adversary eavesdropper --attack all`` (through the Python entry point, one process) and
prints SSIM / PSNR / validator accuracy per cut and rung, beside He, Zhang & Lee's Tables 3
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
RUNGS = ("mlp", "conv", "whitebox", "whitebox-conv", "output")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cuts", nargs="+", default=["conv1", "relu1", "pool1", "conv2", "relu2"])
    p.add_argument("--protocols", nargs="+", default=["plaintext", "encrypted"])
    p.add_argument("--aux", default="holdout")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--attack-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--json", default=None, help="also write every run's record here")
    args = p.parse_args(argv)

    from actors.api import LabOptions, run_lab

    records = []
    for cut in args.cuts:
        t = time.perf_counter()
        report = run_lab(LabOptions(
            model="cnn", cut=cut, protocols=tuple(args.protocols), adversaries=("eavesdropper",),
            attacks=RUNGS, aux=args.aux, epochs=args.epochs, attack_epochs=args.attack_epochs,
            seed=args.seed, backend=args.backend))
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
          "He et al. 2019 PSNR / SSIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        shape = "x".join(map(str, r["cut_shape"]))
        a = r["attack"]
        published = PUBLISHED.get((r["cut"], r["attack_method"]), "") if (
            r["protocol"] == "plaintext") else ""
        print(f"| {r['cut']} | {shape} | {r['protocol']} | {r['target_accuracy']:.1%} | "
              f"{r['attack_method']} | {a['ssim']:.3f} | {a['psnr']:.2f} | "
              f"{a['validator_accuracy']:.1%} | {published} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
