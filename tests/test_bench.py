"""The benches that print machine facts and the ring kernel run and say what they measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import ring_kernels

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import e2e  # noqa: E402 - bench/ is not a package
import without_avx512  # noqa: E402


def test_e2e_names_the_cpu_its_flags_and_the_builds():
    model, flags = e2e.cpu()
    assert model and set(flags) <= set(e2e.FLAGS)
    torch_line, numpy_line = e2e.builds()
    assert torch_line.startswith("torch ") and "BLAS" in torch_line
    assert numpy_line.startswith("numpy ") and "BLAS" in numpy_line


def test_mpc_bench_prints_the_kernel_and_both_modes():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "mpc.py"), "--batch", "8",
                          "--repeats", "1"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    kernel = next(line for line in out.splitlines() if line.startswith("ring-product kernel"))
    assert kernel.split()[2] in ring_kernels.KERNELS
    rows = [line for line in out.splitlines() if line.startswith("| p") or
            line.startswith("| s")]
    assert [r.split("|")[1].strip() for r in rows] == ["public weights", "shared weights"]
    for row in rows:  # the error column: a broken protocol would be far off
        assert float(row.rstrip(" |").split("|")[-1]) < 1e-2


def test_e2e_adds_each_roles_cpu_per_training_step():
    mpc = {"per_training_step": {"steps": 100},
           "seconds": {"server:0": {"busy": 8.0, "busy_cpu": 5.0, "compute_cpu": 4.0},
                       # server 1 computes in a thread of its own: its CPU is added
                       "server:1": {"busy": 3.0, "busy_cpu": 2.0, "compute_cpu": 4.0},
                       "dealer": {"busy": 4.0, "busy_cpu": 3.0, "deal_cpu": 2.5},
                       "transport_estimate": 1.0}}
    line = e2e.cpu_per_step(mpc)
    assert "server:0 50.0 ms CPU (80.0 ms wall busy)" in line
    assert "server:1 60.0 ms CPU (30.0 ms wall busy)" in line
    assert "dealer 30.0 ms CPU" in line and line.endswith("140.0 ms CPU in all")
    assert "no training steps" in e2e.cpu_per_step({"per_training_step": {"steps": 0}})


def test_e2e_accounts_the_machines_cpu_time_steal_included(tmp_path, monkeypatch):
    psutil = pytest.importorskip("psutil")
    if not hasattr(psutil.cpu_times(), "steal"):
        pytest.skip("psutil reports no steal time here (not Linux)")
    stat = tmp_path / "stat"
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))  # psutil reads PROCFS_PATH/stat
    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    stat.write_text(f"cpu  {hz * 10} 0 {hz * 2} {hz * 100} 0 0 0 {hz} 0 0\ncpu0 1 2 3\n")
    before = e2e.cpu_times()
    assert before == {"busy": 12.0, "idle": 100.0, "steal": 1.0}
    stat.write_text(f"cpu  {hz * 40} 0 {hz * 2} {hz * 110} 0 0 0 {hz * 11} 0 0\n")
    share = e2e.cpu_share(before, e2e.cpu_times())
    # 30 busy, 10 idle, 10 stolen: of 50 core-seconds
    assert share == ("machine CPU: 30 core-s busy (60%), 20% idle, 10 core-s (20%) stolen by "
                     "the hypervisor")
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path / "missing"))
    assert e2e.cpu_times() is None
    assert "not available" in e2e.cpu_share(None, before)


def test_without_avx512_restarts_the_bench_with_avx512_switched_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in without_avx512.ENV}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "mpc.py"), "--batch", "8",
                          "--repeats", "1", without_avx512.FLAG], capture_output=True,
                         text=True, check=True, cwd=ROOT,
                         env={**env, "PYTHONPATH": str(ROOT)}).stdout
    assert "an emulation of a machine without AVX-512" in out
    kernel = next(line for line in out.splitlines() if line.startswith("ring-product kernel"))
    assert kernel.split()[2].rstrip() == without_avx512.KERNEL_WITHOUT_AVX512
    # The restarted process's libraries read the switches when they loaded: torch's ATen
    # reports the capability it was held to.
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nimport torch\nimport without_avx512\nargv = sys.argv[1:]\n"
                     "assert without_avx512.reexec_if_asked(argv) and argv == ['--x']\n"
                     "print(torch.backends.cpu.get_cpu_capability())\n")
    got = subprocess.run([sys.executable, str(probe), without_avx512.FLAG, "--x"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**env, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"})
    assert got.stdout.split()[-1] in ("AVX2", "DEFAULT", "NO AVX")  # never AVX512
