"""The benches that print machine facts and the ring kernel run and say what they measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from protocol import ring_kernels

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import e2e  # noqa: E402 - bench/ is not a package


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
