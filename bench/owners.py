"""Many owners and failures, the README's table: label skew, schedules, and crashes.

    python bench/owners.py [--seed 0] [--extra FLAG ...]

Runs ``python -m actors.simulate --protocol plaintext --adversary eavesdropper`` (Ray, default
epochs and attack) once per configuration below and prints, for each, the target accuracy, the
eavesdropper's validator accuracy (all owners, and the worst owner), the batch ledger
(sent / applied / retried), restarts, and the run's wall time:

- 1 owner, clean; the same with ``--chaos server@20`` and with ``--chaos owner:0@300``;
- 4 owners, ``--partition dirichlet:0.5``: sequential with one batch per turn (the default),
  with a whole shard per turn (``--turn-batches 0``), and ``--schedule splitfed``;
- 4 owners, Dirichlet 0.5, ``--chaos server@20``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS: list[tuple[str, list[str]]] = [
    ("1 owner", []),
    ("1 owner, --chaos server@20", ["--chaos", "server@20"]),
    ("1 owner, --chaos owner:0@300", ["--chaos", "owner:0@300"]),
    ("4 owners, dirichlet:0.5", ["--clients", "4", "--partition", "dirichlet:0.5"]),
    ("4 owners, dirichlet:0.5, --turn-batches 0",
     ["--clients", "4", "--partition", "dirichlet:0.5", "--turn-batches", "0"]),
    ("4 owners, dirichlet:0.5, --schedule splitfed",
     ["--clients", "4", "--partition", "dirichlet:0.5", "--schedule", "splitfed"]),
    ("4 owners, dirichlet:0.5, --chaos server@20",
     ["--clients", "4", "--partition", "dirichlet:0.5", "--chaos", "server@20"]),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", nargs="*", default=[], help="more simulate flags")
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{platform.platform()}, seed {args.seed}")
    print("| configuration | target acc | validator (all) | validator (worst owner) | "
          "sent / applied / retried | restarts | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, flags in CONFIGS:
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "actors.simulate", "--protocol", "plaintext",
                            "--adversary", "eavesdropper", "--seed", str(args.seed),
                            "--out", out, "--quiet", *flags, *args.extra],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            (run,) = json.loads((Path(out) / "results.json").read_text())["runs"]
        worst = min(o["attack"]["validator_accuracy"] for o in run["per_owner"] if o["attack"])
        b = run["batches"]
        print(f"| {name} | {run['target_accuracy']:.1%} | "
              f"{run['attack']['validator_accuracy']:.1%} | {worst:.1%} | "
              f"{b['sent']} / {b['applied']} / {b['retried']} | {run['restarts']} | "
              f"{wall:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
