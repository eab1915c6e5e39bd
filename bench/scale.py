"""Scale benchmark (issue 5): many virtual owners, and what the actors cost over one process.

    python bench/scale.py [--owners 10 100 1000] [--epochs 4] [--batch-size 128] [--json FILE]

Two measurements, plaintext protocol, seed 0, the default 4,000 training images, no
adversary run (the eavesdropper's tap is still on the wire, as in every lab run):

1. Scale. For each owner count a vanilla split-learning run (sequential schedule,
   ``turn_batches`` 1) on a fresh local Ray cluster (``init_ray``, 2 CPUs, so 2 owner hosts):
   the wall time of one training round (epoch), the median over the rounds after the first
   (which includes warm-up), and the peak memory of the whole run: start-up, training and
   the final deployment of the first part to every owner. Memory is sampled every 0.25 s as
   the sum of PSS (RSS where PSS cannot be read) over the run's driver process and all its
   descendants: the Ray cluster's gcs, raylet, agents and workers.
2. Overhead. The same batches trained three ways, side by side: through the lab on Ray
   actors (``RayBackend``), through the lab with every role in this process
   (``LocalBackend``: frames still encoded, mirrored and decoded), and as a plain torch loop
   over the ``mlp`` network's two parts (SGD, cross-entropy) in the owners' turn order with each
   owner's per-epoch permutation (as ``DataOwner.train_chunk`` draws it). Median seconds per
   round after the first, the ratios, and the epoch losses' agreement (a sanity check that
   the three trained the same batches). In-process runs use ``--threads`` torch threads (1
   by default, as each Ray role does); the plain loop is also timed with torch's default.
   Configurations: 1 owner and 10 owners, each with one batch per turn (with 10 owners the
   first part, 3.1 MB with its momentum, is handed owner to owner over the wire after every
   batch) and with a whole shard per turn (``turn_batches=None``).

Each configuration runs in its own subprocess (this script with ``--one``), so every Ray run
starts on a fresh cluster and the memory of one run never counts in another. The sampler
also reports "other load": the share of the machine's CPUs that processes outside the run
kept busy meanwhile; above 10% the report warns that its timings are inflated. Progress goes
to stderr, the report to stdout; ``--json FILE`` also writes every number. About 4 minutes on
2 cores. Needs ``psutil`` (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

MARK = "@@scale-result@@ "
#: The issue's targets.
PEAK_TARGET_GB = 6.0
OVERHEAD_TARGET, OVERHEAD_STRETCH = 2.0, 1.3
GB = 1e9
OTHER_LOAD_WARN = 0.10  # warn when other processes used more of the CPUs than this


@dataclass(frozen=True)
class Spec:
    """One configuration, run in one subprocess."""

    kind: str  # "scale" or "overhead"
    backend: str  # "ray", "local" or "plain"
    owners: int
    turn_batches: int | None = 1
    epochs: int = 4
    batch_size: int = 128
    seed: int = 0
    threads: int | None = 1  # torch threads of an in-process run (None: torch's default)
    object_store_mb: int = 512
    data_plane: str = "ray"  # Ray runs: frames as actor calls, or over "sockets"

    @property
    def label(self) -> str:
        threads = (f", {self.data_plane} data plane" if self.backend == "ray"
                   else f", threads {self.threads or 'default'}")
        return (f"{self.kind}: {self.backend}, {self.owners} owners, turn_batches "
                f"{self.turn_batches}, {self.epochs} epochs, batch {self.batch_size}{threads}")


def log(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


# --- memory ----------------------------------------------------------------------------------


def _category(proc: Any, root: int) -> str:
    """A short name to group processes by: the driver, a Ray worker's title, or the binary."""
    if proc.pid == root:
        return "driver"
    try:
        cmd = proc.cmdline()
        first = cmd[0] if cmd else proc.name()
    except Exception:  # noqa: BLE001 - it may have exited meanwhile
        return "?"
    if first.startswith("ray::"):
        return first.split()[0].split(".")[0]  # ray::RoleActor, ray::IDLE
    if "python" in Path(first).name and len(cmd) > 1:  # ray's python agents: their script
        script = next((Path(a).stem for a in cmd[1:] if a.endswith(".py")), Path(first).name)
        return script
    return Path(first).name


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (every process, ours or not)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(
        t, "guest_nice", 0.0)  # guest time is already counted in user and nice


@dataclass
class MemorySampler:
    """Peak of the summed PSS of a process and its descendants, sampled in a thread; and
    how much CPU the rest of the machine used meanwhile (other load skews the timings)."""

    root: int
    interval: float = 0.25
    peak: int = 0
    peak_breakdown: dict[str, int] = field(default_factory=dict)
    peak_processes: int = 0
    samples: int = 0
    used_rss: bool = False  # some process's PSS could not be read: its RSS was counted
    cpu_seconds: dict[int, float] = field(default_factory=dict)  # per process of the tree
    other_cpu_seconds: float = 0.0  # busy CPU of every process outside the tree (and this)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> MemorySampler:
        self._busy0, self._self0 = busy_cpu_seconds(), time.process_time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        busy = busy_cpu_seconds() - self._busy0
        sampler = time.process_time() - self._self0  # this process: the sampling itself
        self.other_cpu_seconds = max(0.0, busy - sum(self.cpu_seconds.values()) - sampler)

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            self.sample(root)
            self._stop.wait(self.interval)

    def sample(self, root: Any) -> None:
        import psutil

        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total, breakdown = 0, {}
        for proc in procs:
            try:
                try:
                    mem = proc.memory_full_info().pss
                except (psutil.AccessDenied, AttributeError):
                    mem = proc.memory_info().rss
                    self.used_rss = True
                cpu = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            self.cpu_seconds[proc.pid] = max(self.cpu_seconds.get(proc.pid, 0.0),
                                             cpu.user + cpu.system)
            total += mem
            name = _category(proc, self.root)
            breakdown[name] = breakdown.get(name, 0) + mem
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_breakdown, self.peak_processes = total, breakdown, len(procs)


# --- one configuration (the child process) ---------------------------------------------------


class EpochClock:
    """The ``progress`` of ``lab.train``: notes the time at each epoch's end."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.marks = [time.perf_counter()]

    def update(self, n: int = 1) -> None:
        self.marks.append(time.perf_counter())
        log(f"  {self.label}: epoch {len(self.marks) - 1} in "
            f"{self.marks[-1] - self.marks[-2]:.2f} s")

    @property
    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def run_lab(spec: Spec) -> dict[str, Any]:
    """Train through the lab on Ray or in process; per-epoch wall times and the ledger."""
    t_import = time.perf_counter()
    if spec.backend == "ray":
        from actors.ray_backend import RayBackend, init_ray  # sets Ray's loopback env first
    from actors.backend import Backend, LocalBackend
    from actors.data import load_target
    from actors.lab import RunConfig, pin_identities, start_roles, train
    from actors.nets.zoo import ModelSpec, build_network
    from actors.owner import TrainConfig
    from actors.training import turns

    data = load_target(seed=spec.seed)
    net = build_network(ModelSpec("mlp"), spec.seed, data.input_shape, data.classes)
    cfg = RunConfig(protocol="plaintext", epochs=spec.epochs, clients=spec.owners,
                    seed=spec.seed, train=TrainConfig(batch_size=spec.batch_size),
                    adversaries=(), turn_batches=spec.turn_batches)
    t_ray = time.perf_counter()
    backend: Backend
    if spec.backend == "ray":
        init_ray(None, num_cpus=2, object_store_mb=spec.object_store_mb)
        backend = RayBackend(data_plane=spec.data_plane)
    else:
        backend = LocalBackend()
    t0 = time.perf_counter()
    cast = start_roles(backend, cfg, net, data, session=1)
    backend.connect()
    pin_identities(backend, cast.parties)
    t1 = time.perf_counter()
    clock = EpochClock(f"{spec.backend} x{spec.owners}")
    losses, batches, restarts, steps, _ = train(backend, cfg, cast, net, progress=clock)
    t2 = time.perf_counter()
    backend.shutdown()
    if spec.backend == "ray":
        import ray

        ray.shutdown()
    per_owner = [-(-len(tr) // spec.batch_size) for tr in cast.train_shards]
    segments = turns(per_owner, spec.turn_batches)
    handoffs = sum(1 for a, b in zip(segments, segments[1:] + segments[:1], strict=True)
                   if a[0] != b[0])
    return {
        "epoch_seconds": clock.epochs, "losses": losses, "batches": batches,
        "restarts": restarts, "steps": steps, "hosts": len(cast.hosts),
        "turns_per_epoch": len(segments), "handoffs_per_epoch": handoffs,
        "batches_per_epoch": sum(per_owner),
        "import_data_seconds": t_ray - t_import, "ray_start_seconds": t0 - t_ray,
        "setup_seconds": t1 - t0, "deploy_seconds": t2 - clock.marks[-1],
    }


def run_plain(spec: Spec) -> dict[str, Any]:
    """The same batches, in the same order, through the unsplit network in one process."""
    import torch
    import torch.nn.functional as F

    from actors.data import load_target
    from actors.lab import owner_name
    from actors.nets.zoo import ModelSpec, build_network
    from actors.owner import TrainConfig
    from actors.partition import parse_partition, split_indices
    from actors.training import turns

    data = load_target(seed=spec.seed)
    cfg = TrainConfig(batch_size=spec.batch_size)
    net = build_network(ModelSpec("mlp"), spec.seed, data.input_shape, data.classes)
    first, second = net.owner_part(), net.server_part()
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum)
            for m in (first, second)]
    shards = split_indices(data.train.y, spec.owners, parse_partition("iid"), spec.seed)
    xs = [torch.as_tensor(data.train.x[s]) for s in shards]
    ys = [torch.as_tensor(data.train.y[s]) for s in shards]
    names = [owner_name(i) for i in range(spec.owners)]
    size = cfg.batch_size
    segments = turns([-(-len(s) // size) for s in shards], spec.turn_batches)
    clock = EpochClock(f"plain x{spec.owners}")
    losses = []
    first.train()
    second.train()
    for epoch in range(spec.epochs):
        perms = [torch.randperm(len(s), generator=torch.Generator().manual_seed(
            (cfg.seed * 1_000_003 + epoch) * 65_537 + sum(name.encode())))
            for s, name in zip(shards, names, strict=True)]
        total, n = 0.0, 0
        for owner, start, stop in segments:
            for j in range(start, stop):
                idx = perms[owner][j * size:(j + 1) * size]
                for opt in opts:
                    opt.zero_grad()
                loss = F.cross_entropy(second(first(xs[owner][idx])), ys[owner][idx])
                loss.backward()
                for opt in opts:
                    opt.step()
                total += float(loss.detach())
                n += 1
        losses.append(total / max(n, 1))
        clock.update(1)
    return {"epoch_seconds": clock.epochs, "losses": losses,
            "batches": {"sent": n * spec.epochs, "applied": n * spec.epochs, "retried": 0}}


def run_one(spec: Spec) -> dict[str, Any]:
    import torch

    if spec.backend != "ray" and spec.threads:
        torch.set_num_threads(spec.threads)
    t = time.perf_counter()
    out = run_plain(spec) if spec.backend == "plain" else run_lab(spec)
    return out | {"threads": torch.get_num_threads() if spec.backend != "ray" else 1,
                  "child_seconds": time.perf_counter() - t}


# --- the driver ------------------------------------------------------------------------------


def round_seconds(epochs: list[float]) -> float:
    """Seconds per round: the median of the rounds after the first (warm-up) one."""
    return statistics.median(epochs[1:] if len(epochs) > 1 else epochs)


def launch(spec: Spec, interval: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh subprocess, sampling its process tree's memory meanwhile."""
    log(f"start {spec.label}")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--one",
                             json.dumps(asdict(spec))], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    sampler = MemorySampler(proc.pid, interval).start()
    stdout, _ = proc.communicate()
    sampler.stop()
    wall = time.perf_counter() - t
    result: dict[str, Any] = {"spec": asdict(spec), "wall_seconds": wall,
                              "peak_gb": sampler.peak / GB, "peak_processes":
                              sampler.peak_processes, "memory_samples": sampler.samples,
                              "peak_breakdown_gb": {k: v / GB for k, v in sorted(
                                  sampler.peak_breakdown.items(), key=lambda kv: -kv[1])},
                              "rss_fallback": sampler.used_rss,
                              "cpu_seconds": sum(sampler.cpu_seconds.values()),
                              "other_load": sampler.other_cpu_seconds / (
                                  wall * (os.cpu_count() or 1))}
    lines = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        result["error"] = f"exit status {proc.returncode}"
        log(f"FAILED {spec.label}: exit status {proc.returncode}")
        return result
    result |= json.loads(lines[-1][len(MARK):])
    result["round_seconds"] = round_seconds(result["epoch_seconds"])
    log(f"done  {spec.label}: {result['round_seconds']:.3f} s/round, peak "
        f"{result['peak_gb']:.2f} GB, {wall:.0f} s, other load {result['other_load']:.0%}")
    return result


def code_version() -> str:
    """The commit measured, and which tracked files differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    sha = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("diff", "--name-only", "HEAD").split()
    return sha + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def processor() -> str:
    """The CPU's model name (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine() -> dict[str, Any]:
    import torch

    return {"code": code_version(), "platform": platform.platform(), "machine": platform.machine(),
            "processor": processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads(), "date": time.strftime(
                "%Y-%m-%d %H:%M:%S %Z")}


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"


def report(info: dict[str, Any], scale: list[dict[str, Any]],
           overhead: list[dict[str, Any]], batch_size: int) -> str:
    out = [f"# SplitWire scale benchmark (issue 5), {info['date']}",
           f"# {info['platform']}; {info['machine']} ({info['processor']}), "
           f"{info['cpus']} CPUs; Python {info['python']}, torch {info['torch']} "
           f"(default {info['torch_default_threads']} threads); code {info['code']}",
           "# plaintext, seed 0, 4,000 training images, sequential schedule; rounds = epochs; "
           "s/round = median over the rounds after the first", ""]
    runs = scale + [v for row in overhead for v in row["runs"].values()]
    busy = max((r.get("other_load", 0.0) for r in runs), default=0.0)
    if busy > OTHER_LOAD_WARN:
        out += [f"WARNING: other processes kept the CPUs up to {busy:.0%} busy during a "
                "configuration (column 'other load': their share of all CPUs over its wall "
                "time); its timings are inflated, rerun on a quiet machine.", ""]
    if scale:
        out += report_scale(scale)
    if overhead:
        out += report_overhead(overhead, batch_size)
    return "\n".join(out)


def report_scale(scale: list[dict[str, Any]]) -> list[str]:
    out = ["## 1. Virtual owners on Ray (2 CPUs, turn_batches 1); target: peak <= "
            f"{PEAK_TARGET_GB:g} GB at 1,000 owners", "",
            "| owners | hosts | batch | turns/round | s/round | first round s | setup s | "
            "deploy s | peak GB | processes | sent = applied | last loss | other load | "
            "target |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in scale:
        s = r["spec"]
        if "error" in r:
            out.append(f"| {s['owners']} | failed: {r['error']} |")
            continue
        b = r["batches"]
        ok = b["sent"] == b["applied"]
        target = ""
        if s["owners"] == 1000:
            target = "met" if r["peak_gb"] <= PEAK_TARGET_GB else "MISSED"
        out.append(
            f"| {s['owners']} | {r['hosts']} | {s['batch_size']} | {r['turns_per_epoch']} | "
            f"{r['round_seconds']:.2f} | {r['epoch_seconds'][0]:.2f} | "
            f"{r['setup_seconds']:.2f} | {r['deploy_seconds']:.2f} | {r['peak_gb']:.2f} | "
            f"{r['peak_processes']} | {b['sent']} = {b['applied']} {'ok' if ok else 'MISMATCH'} "
            f"| {r['losses'][-1]:.3f} | {r['other_load']:.0%} | {target} |")
    out += ["", "Peak memory by process group (GB, at the peak sample):"]
    for r in scale:
        if "error" not in r:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["peak_breakdown_gb"].items())
            out.append(f"- {r['spec']['owners']} owners: {parts}")
    return [*out, ""]


def report_overhead(overhead: list[dict[str, Any]], batch_size: int) -> list[str]:
    out = [f"## 2. Overhead of actors at batch {batch_size}: the same batches "
            f"three ways; target: Ray/plain <= {OVERHEAD_TARGET:g}x (stretch "
            f"{OVERHEAD_STRETCH:g}x)", "",
            "| owners | turn_batches | batches/turns per round | hand-offs/round | plain s/round | "
            "plain (default threads) | local s/round | ray s/round | Local/plain | Ray/plain | "
            "Ray/Local | ray + sockets s/round | Ray+sockets/plain | other load (max) | "
            "target (best Ray) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in overhead:
        runs = row["runs"]
        sec = {k: (None if "error" in v else v["round_seconds"]) for k, v in runs.items()}
        ray_r = runs["ray"]
        if "error" in ray_r or sec["plain"] is None:
            out.append(f"| {row['owners']} | {row['turn_batches']} | failed |")
            continue
        ratio = min(v for k, v in sec.items() if k.startswith("ray") and v) / sec["plain"]
        target = ("stretch met" if ratio <= OVERHEAD_STRETCH else
                  "met" if ratio <= OVERHEAD_TARGET else "MISSED")

        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        out.append(
            f"| {row['owners']} | {row['turn_batches']} | {ray_r['batches_per_epoch']}/"
            f"{ray_r['turns_per_epoch']} | "
            f"{ray_r['handoffs_per_epoch']} | {s(sec['plain'])} | {s(sec['plain-default'])} | "
            f"{s(sec['local'])} | {s(sec['ray'])} | {fmt_ratio(sec['local'], sec['plain'])} | "
            f"{fmt_ratio(sec['ray'], sec['plain'])} | {fmt_ratio(sec['ray'], sec['local'])} | "
            f"{s(sec.get('ray-sockets'))} | {fmt_ratio(sec.get('ray-sockets'), sec['plain'])} | "
            f"{max(v.get('other_load', 0.0) for v in runs.values()):.0%} | {target} |")
    out += ["", "Sanity: epoch losses (last epoch; max |difference| from the plain loop over "
            "all epochs) and the batch ledger:"]
    for row in overhead:
        runs = row["runs"]
        if any("error" in v for v in runs.values()):
            continue
        plain = runs["plain"]["losses"]
        parts = []
        for k in ("plain", "plain-default", "local", "ray", "ray-sockets"):
            losses = runs[k]["losses"]
            diff = max(abs(a - b) for a, b in zip(losses, plain, strict=True))
            parts.append(f"{k} {losses[-1]:.6f} (|d| {diff:.1e})")
        ledger = ", ".join(f"{k} sent {runs[k]['batches']['sent']} = applied "
                           f"{runs[k]['batches']['applied']}"
                           for k in ("local", "ray", "ray-sockets"))
        out.append(f"- {row['owners']} owners, turn_batches {row['turn_batches']}: "
                   f"{'; '.join(parts)}; {ledger}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--owners", type=int, nargs="+", default=[10, 100, 1000],
                   help="owner counts of the scale runs")
    p.add_argument("--epochs", type=int, default=4,
                   help="rounds per scale run (the first is warm-up and not in the median)")
    p.add_argument("--overhead-epochs", type=int, default=6,
                   help="rounds per overhead run (short rounds: more of them)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the in-process runs (each Ray role uses 1)")
    p.add_argument("--object-store-mb", type=int, default=512)
    p.add_argument("--interval", type=float, default=0.25, help="memory sampling period, s")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--data-plane", choices=["ray", "sockets"], default="ray",
                   help="how frames travel in the scale runs (overhead runs measure both)")
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one Spec (JSON), print it
    args = p.parse_args(argv)

    if args.one:
        result = run_one(Spec(**json.loads(args.one)))
        print(MARK + json.dumps(result), flush=True)
        return 0

    try:
        import psutil  # noqa: F401 - the memory sampler needs it
    except ImportError:
        print("bench/scale.py needs psutil: pip install psutil (or the project's test extra)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    info = machine()
    base = Spec(kind="scale", backend="ray", owners=1, epochs=args.epochs,
                batch_size=args.batch_size, threads=args.threads,
                object_store_mb=args.object_store_mb, data_plane=args.data_plane)
    scale = [] if args.skip_scale else [launch(replace(base, owners=n), args.interval)
                                        for n in args.owners]
    overhead: list[dict[str, Any]] = []
    if not args.skip_overhead:
        for owners, tb in ((1, 1), (1, None), (10, 1), (10, None)):
            spec = replace(base, kind="overhead", owners=owners, turn_batches=tb,
                           epochs=args.overhead_epochs)
            runs = {"plain": launch(replace(spec, backend="plain"), args.interval),
                    "plain-default": launch(replace(spec, backend="plain", threads=None),
                                            args.interval),
                    "local": launch(replace(spec, backend="local"), args.interval),
                    "ray": launch(replace(spec, data_plane="ray"), args.interval),
                    "ray-sockets": launch(replace(spec, data_plane="sockets"), args.interval)}
            overhead.append({"owners": owners, "turn_batches": tb, "runs": runs})
    total = time.perf_counter() - t0
    info["total_seconds"] = total
    print(report(info, scale, overhead, args.batch_size))
    print(f"\nwhole benchmark: {total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "scale": scale,
                                         "overhead": overhead}, indent=1))
    failed = [r for r in scale if "error" in r] + [
        v for row in overhead for v in row["runs"].values() if "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
