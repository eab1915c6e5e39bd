"""Run a bench as if the CPU had no AVX-512, where the libraries let us say so.

    python bench/e2e.py --without-avx512 ...     python bench/mpc.py --without-avx512 ...

The speed goals (issue 17) are set for a 2-core x86_64 machine with AVX2 and FMA but no
AVX-512, which a session may not be lent. On a machine with AVX-512 this turns off every
AVX-512 code path that a library lets a user turn off, for the bench and every process it
starts (Ray's workers inherit the environment):

- torch's ATen kernels: ``ATEN_CPU_CAPABILITY=avx2``;
- MKL (torch's BLAS): ``MKL_ENABLE_INSTRUCTIONS=AVX2``;
- OpenBLAS (numpy's BLAS, the limb kernels' GEMMs): ``OPENBLAS_CORETYPE=Haswell``;
- numpy's own loops (the ReLU circuit's bit operations): ``NPY_DISABLE_CPU_FEATURES``
  naming its AVX-512 dispatch targets;
- OpenSSL inside ``cryptography`` (AES-GCM): ``OPENSSL_ia32cap`` with AVX-512 F/DQ/IFMA/CD/
  BW/VL masked.

One thing no switch reaches: torch's int64 matmul stays vectorised with AVX-512 whatever
``ATEN_CPU_CAPABILITY`` says (measured: 5.2 ms and 6.0 ms for 256x500 @ 500x500 with and
without the switch, against ~100 ms on the machine without AVX-512). So the ring kernel is
forced to the one that machine's calibration picks, ``karatsuba22-float64-numpy``
(``SPLITWIRE_RING_KERNEL``). What stays faster than the real thing: the cores themselves
(clock, caches, Zen 4's wider FP units under AVX2). A figure measured this way says so.
"""

from __future__ import annotations

import argparse
import os
import sys

from protocol.ring_kernels import FORCE_ENV

#: The kernel the calibration picks on the machine without AVX-512 (README, MPC section).
KERNEL_WITHOUT_AVX512 = "karatsuba22-float64-numpy"

#: OpenSSL's second capability word is CPUID leaf 7 EBX: AVX-512 F (bit 16), DQ (17), IFMA
#: (21), CD (28), BW (30), VL (31).
_OPENSSL_AVX512_BITS = sum(1 << b for b in (16, 17, 21, 28, 30, 31))

ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENSSL_ia32cap": f":~{_OPENSSL_AVX512_BITS:#x}",
    FORCE_ENV: KERNEL_WITHOUT_AVX512,
}

FLAG = "--without-avx512"


def reexec_if_asked(argv: list[str]) -> bool:
    """If ``FLAG`` is in ``argv``: drop it and, unless the environment already says so,
    restart this script with ``ENV`` set (the libraries read it when they load, so it cannot
    be set later in the same process). Returns whether the run is emulated."""
    if FLAG not in argv:
        return False
    if all(os.environ.get(k) == v for k, v in ENV.items()):
        argv.remove(FLAG)
        return True
    os.execve(sys.executable, [sys.executable, *sys.argv[:1], *argv],
              {**os.environ, **ENV})
    return True  # not reached: the restarted script, with ENV set, gets here above


def parse(parser: argparse.ArgumentParser, known: bool = False) -> tuple[object, bool]:
    """Add ``FLAG`` to a bench's ``parser`` (for its --help), restart the bench under ``ENV``
    if the flag is given, then parse: (``parse_args`` or ``parse_known_args``'s result,
    whether the run is emulated)."""
    parser.add_argument(FLAG, action="store_true",
                        help="emulate a CPU without AVX-512 (bench/without_avx512.py)")
    argv = sys.argv[1:]
    emulated = reexec_if_asked(argv)
    return (parser.parse_known_args(argv) if known else parser.parse_args(argv)), emulated


def banner() -> str:
    return ("# AVX-512 switched off where the libraries allow (bench/without_avx512.py: ATen, "
            f"MKL, OpenBLAS, numpy, OpenSSL) and the ring kernel forced to "
            f"{KERNEL_WITHOUT_AVX512}: an emulation of a machine without AVX-512, not one")
