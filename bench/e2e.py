"""The README's main command end to end, per protocol, and the machine it ran on.

    python bench/e2e.py [--runs 1] [--alone] [--without-avx512] [SIMULATE FLAG ...]

Runs ``python -m actors.simulate --quiet`` (Ray start included, every protocol, default flags
plus any given) ``--runs`` times and prints the whole command's wall time, each protocol's
``seconds`` from ``results.json``, the secret-shared run's seconds per phase (wall and CPU),
each of its roles' CPU a training step, and the ring kernel its servers used; first, the
machine: CPU model and the vector extensions that decide which kernel wins (AVX2, AVX-512,
NEON), the torch and numpy builds and their BLAS. By default the secret-shared protocol runs
beside the others (``actors.api.protocol_lanes``), so their seconds overlap; ``--alone`` runs
the command once more with ``--one-protocol-at-a-time`` and prints each protocol's seconds on
its own and secret sharing's ratio to plaintext.

Each run also says how the machine's CPU time went while it ran (psutil's machine-wide
times, all processes; Linux counts the steal): busy, idle, and stolen by the hypervisor. A
shared cloud VM can lose a quarter of its CPU to its neighbours (measured on 2026-12-03: two
busy processes on a 2-core VM got 1.6 cores' worth of work done, 25% of their time stolen),
which no change to the lab explains away; a figure measured there says so beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import without_avx512  # bench/ is the script's directory

from protocol import ring_kernels

#: CPU flags worth naming (x86 /proc/cpuinfo spellings, and ARM's).
FLAGS = ("avx2", "fma", "avx512f", "avx512dq", "avx512ifma", "asimd", "neon", "sve")


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``FLAGS`` it has (Linux /proc/cpuinfo, else sysctl)."""
    model, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags |= set(value.split())
    elif sys.platform == "darwin":  # Apple silicon: NEON always, names via sysctl
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                             text=True, check=False)
        model = out.stdout.strip() or model
        flags |= {"neon", "asimd"} if platform.machine() == "arm64" else set()
    return model, [f for f in FLAGS if f in flags]


def cpu_times() -> dict[str, float] | None:
    """Machine-wide CPU seconds so far by kind (busy, idle, steal), from psutil (the ``test``
    extra, as for bench/scale.py); None without psutil or where it reports no steal (off
    Linux). Guest time is already counted in user and nice."""
    try:
        import psutil

        t = psutil.cpu_times()
    except (ImportError, OSError):
        return None
    if not hasattr(t, "steal"):
        return None
    busy = t.user + t.nice + t.system + t.irq + t.softirq
    return {"busy": busy, "idle": t.idle + t.iowait, "steal": t.steal}


def cpu_share(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    """How the machine's CPU time between two ``cpu_times`` went, as one phrase."""
    if before is None or after is None:
        return "CPU accounting: not available here"
    spent = {k: after[k] - before[k] for k in before}
    total = sum(spent.values()) or 1.0
    return (f"machine CPU: {spent['busy']:.0f} core-s busy ({100 * spent['busy'] / total:.0f}%), "
            f"{100 * spent['idle'] / total:.0f}% idle, {spent['steal']:.0f} core-s "
            f"({100 * spent['steal'] / total:.0f}%) stolen by the hypervisor")


def builds() -> list[str]:
    numpy_blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    torch_cfg = torch.__config__.show()
    torch_blas = next((part.split("=", 1)[1] for part in torch_cfg.replace(",", " ").split()
                       if part.startswith("BLAS_INFO=")), "?")
    return [f"torch {torch.__version__}, BLAS {torch_blas}, CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}",
            f"numpy {np.__version__}, BLAS {numpy_blas.get('name')} {numpy_blas.get('version')}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--alone", action="store_true",
                   help="also time each protocol on its own (--one-protocol-at-a-time)")
    (args, extra), emulated = without_avx512.parse(p, known=True)
    torch.set_num_threads(1)
    model, flags = cpu()
    kernel, calibration = ring_kernels.chosen()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs: {model}")
    print(f"# flags: {', '.join(flags) or 'none of ' + '/'.join(FLAGS)}")
    for line in builds():
        print(f"# {line}")
    if emulated:
        print(without_avx512.banner())
    how = (", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in calibration.items()) if calibration
           else f"forced by {ring_kernels.FORCE_ENV}: no calibration")
    print(f"# ring kernel here: {kernel} ({how})")
    per_protocol, last = timed(args.runs, extra, "whole command")
    med = statistics.median
    if last:
        print(f"secret-shared: ring kernel {last.get('kernel')}; seconds per phase:")
        for role, phases in last.get("seconds", {}).items():
            text = (", ".join(f"{k} {v:.1f}" for k, v in phases.items())
                    if isinstance(phases, dict) else f"{phases:.1f}")
            print(f"  {role}: {text}")
        print(cpu_per_step(last))
    if args.alone:
        alone, _ = timed(args.runs, [*extra, "--one-protocol-at-a-time"],
                         "one protocol at a time")
        if "plaintext" in alone and "secret-shared" in alone:
            ratio = med(alone["secret-shared"]) / med(alone["plaintext"])
            print(f"secret-shared / plaintext, each alone: {ratio:.2f}x")
    return 0


def cpu_per_step(mpc: dict) -> str:
    """Each role's CPU a training step (its ``busy_cpu``, plus server 1's ``compute_cpu``,
    which runs in a thread of its own), beside the wall time of its busy phase: the figure to
    put next to ``bench/mpc_layers.py --net mlp``'s serial training step (the protocol's own
    compute, all parties in one process, no wire), which shows what the lab adds. Server 1's
    ``compute_cpu`` also counts each program's first round, which runs inside its busy phase
    (a subtraction or two: well under a millisecond a step)."""
    steps = mpc.get("per_training_step", {}).get("steps") or 0
    if not steps:
        return "  (no training steps on shares)"
    parts, total = [], 0.0
    for role, phases in mpc.get("seconds", {}).items():
        if not isinstance(phases, dict) or "busy_cpu" not in phases:
            continue
        cpu = phases["busy_cpu"] + (phases.get("compute_cpu", 0.0) if role == "server:1" else 0)
        total += cpu
        parts.append(f"{role} {1e3 * cpu / steps:.1f} ms CPU ({1e3 * phases['busy'] / steps:.1f}"
                     " ms wall busy)")
    return (f"  a training step ({steps} of them, inference included): " + ", ".join(parts)
            + f"; {1e3 * total / steps:.1f} ms CPU in all")


def timed(runs: int, extra: list[str], what: str) -> tuple[dict[str, list[float]], dict]:
    """Run the command ``runs`` times; print its wall time and each protocol's seconds."""
    walls: list[float] = []
    shares: list[str] = []
    per_protocol: dict[str, list[float]] = {}
    last: dict = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            t, before = time.perf_counter(), cpu_times()
            subprocess.run([sys.executable, "-m", "actors.simulate", "--quiet", "--out", out,
                            *extra], check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
            shares.append(cpu_share(before, cpu_times()))
            runs_json = json.loads((Path(out) / "results.json").read_text())["runs"]
        seen = {}
        for run in runs_json:  # one row per adversary; the protocol's seconds are shared
            seen.setdefault(run["protocol"], run)
        for protocol, run in seen.items():
            per_protocol.setdefault(protocol, []).append(run["seconds"])
            if run.get("mpc"):
                last = run["mpc"]
    med = statistics.median
    print(f"{what}: {med(walls):.1f} s (median of {len(walls)}: "
          + ", ".join(f"{w:.1f}" for w in walls) + ")")
    for wall, share in zip(walls, shares, strict=True):
        print(f"  run of {wall:.1f} s: {share}")
    for protocol, seconds in per_protocol.items():
        print(f"  {protocol}: {med(seconds):.1f} s")
    return per_protocol, last


if __name__ == "__main__":
    sys.exit(main())
