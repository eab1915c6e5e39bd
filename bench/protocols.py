"""The README's main table: every protocol and adversary, default flags, over several seeds.

    python bench/protocols.py [--seeds 0 1 2] [--extra FLAG ...]

Runs ``python -m actors.simulate`` (Ray, every protocol, every adversary) once per seed and
prints, per (protocol, adversary), the median target accuracy, SSIM, PSNR and validator
accuracy, the run's wall time, and for secret sharing the communication per training step.
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
from collections import defaultdict
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--extra", nargs="*", default=[], help="more simulate flags")
    args = p.parse_args()
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    walls = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "actors.simulate", "--seed", str(seed),
                            "--out", out, "--quiet", *args.extra], check=True,
                           stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
            for run in json.loads((Path(out) / "results.json").read_text())["runs"]:
                rows[(run["protocol"], run["adversary"])].append(run)
    med = statistics.median
    print(f"# {platform.machine()}, {time.strftime('%Y-%m-%d')}, seeds {args.seeds}, medians; "
          f"whole command {med(walls):.0f} s (median wall, Ray start included)")
    print("| protocol | adversary | target acc | SSIM | PSNR dB | validator acc |")
    print("|---|---|---|---|---|---|")
    for (protocol, adversary), runs in rows.items():
        print(f"| {protocol} | {adversary} | {med(r['target_accuracy'] for r in runs):.1%} | "
              f"{med(r['attack']['ssim'] for r in runs):.3f} | "
              f"{med(r['attack']['psnr'] for r in runs):.2f} | "
              f"{med(r['attack']['validator_accuracy'] for r in runs):.1%} |")
    base = next(iter(rows.values()))
    print(f"\nmean-image baseline: SSIM {med(r['baseline']['ssim'] for r in base):.3f}, "
          f"validator {med(r['baseline']['validator_accuracy'] for r in base):.1%}")
    for (protocol, _), runs in rows.items():
        if runs[0].get("mpc"):
            step = runs[0]["mpc"]["per_training_step"]
            infer = runs[0]["mpc"]["per_inference_batch"]
            print(f"{protocol}: per training step {step['rounds']:.0f} rounds, "
                  f"{step['online_bytes'] / 1e6:.1f} MB between servers, "
                  f"{step['dealer_bytes'] / 1e6:.1f} MB from the dealer; per inference batch "
                  f"of 250: {infer['rounds']:.0f} rounds, {infer['online_bytes'] / 1e6:.1f} MB, "
                  f"{infer['dealer_bytes'] / 1e6:.1f} MB; run {runs[0]['seconds']:.0f} s")
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
