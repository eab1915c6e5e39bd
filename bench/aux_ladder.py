"""The README's attack table: the plaintext eavesdropper with every offline auxiliary set.

    python bench/aux_ladder.py [--seeds 0 1 2] [--backend ray|local]

Runs ``python -m actors.simulate --protocol plaintext --aux A`` for each offline aux set and
seed, and prints the median over seeds of target accuracy, SSIM, PSNR and validator accuracy
next to the published figures of He, Zhang & Lee (ACSAC 2019, Table 4).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AUX = ["mnist-holdout", "letters", "digits-uci", "noise"]
PUBLISHED = {  # He et al. 2019 Table 4, black-box inverse network, MNIST ReLU2 (PSNR / SSIM)
    "mnist-holdout": "20.81 dB / 0.805 (same distribution)",
    "letters": "n/a (they used no letters)",
    "digits-uci": "n/a",
    "noise": "7.72 dB / 0.431 (random noise)",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--backend", choices=["ray", "local"], default="local")
    args = p.parse_args()
    rows = []
    for aux in AUX:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "actors.simulate", "--protocol", "plaintext",
                       "--adversary", "eavesdropper", "--aux", aux, "--seed", str(seed),
                       "--out", out, "--quiet", "--backend", args.backend]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                runs.append(json.loads((Path(out) / "results.json").read_text())["runs"][0])
        med = {k: statistics.median(r["attack"][k] for r in runs)
               for k in ("ssim", "psnr", "validator_accuracy")}
        acc = statistics.median(r["target_accuracy"] for r in runs)
        rows.append((aux, acc, med))
    print(f"# {platform.node()} {platform.machine()} {time.strftime('%Y-%m-%d')}, "
          f"seeds {args.seeds}, medians, backend {args.backend}")
    print("| aux | target acc | SSIM | PSNR dB | validator acc | He et al. 2019 (ReLU2) |")
    print("|---|---|---|---|---|---|")
    for aux, acc, m in rows:
        print(f"| {aux} | {acc:.1%} | {m['ssim']:.3f} | {m['psnr']:.2f} | "
              f"{m['validator_accuracy']:.1%} | {PUBLISHED[aux]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
