"""Exact matrix products mod 2^64, several ways, and the choice of the fastest on this machine.

Without AVX-512 (vpmullq) no x86 CPU has a vectorised 64-bit integer multiply, so torch's int64
matmul runs scalar there: 141 ms for 256x500 @ 500x500 on a 2-core AMD EPYC, against 1.9 ms
for float32. The limb kernels get the same exact result from floating-point BLAS instead:

- split each operand into L-bit limbs, ``a = sum_i a_i 2^(L i)`` with ``0 <= a_i < 2^L``;
- ``a @ b mod 2^64 = sum_{i+j} (a_i @ b_j) 2^(L (i + j))``, keeping only the pairs with
  ``L (i + j) < 64`` (the others vanish mod 2^64);
- each ``a_i @ b_j`` is computed in floating point, which is exact while every partial sum
  stays below 2^mantissa (2^53 for float64, 2^24 for float32). A limb product is below 2^(2L)
  and all terms are non-negative, so a dot product of at most ``2^(mantissa - 2L)`` terms is
  exact whatever order BLAS adds them in; longer inner dimensions are cut into chunks of that
  many terms, each converted to an integer before the chunks are added (in uint64, which wraps
  mod 2^64 by itself).

For 256x500 @ 500x500 on a 2-core AMD EPYC without AVX-512 (2026-12-01, `bench/mpc.py`):
int64 97 ms; 22-bit limbs (3 limbs, 6 float64 products, chunks of 512) 24 ms; 16-bit limbs
(4 limbs, 10 products, chunks of 2^21) 40 ms; 8-bit limbs over float32 (8 limbs, 36 products,
chunks of 256) 83 ms. ``KaratsubaKernel`` gets the 22-bit limbs' result from five products
instead of six (a0 b1 + a1 b0 = (a0 - a1)(b1 - b0) + a0 b0 + a1 b1), with fewer output
conversions: 6.3 against 6.9 ms for 64x500 @ 500x500 and 7.0 against 9.4 ms for 500x64 @ 64x500
(a weight gradient; calibration, 2026-12-01 21:05 UTC, same machine). Since 2026-12-02 it
makes four BLAS calls ([a0; a2] @ b0 is one) and can run them through numpy's BLAS instead of
torch's (``karatsuba22-float64-numpy``): on this AMD EPYC, torch's MKL took 6.6 ms for five
64x500 @ 500x500 float64 products with distinct right operands and numpy's OpenBLAS 5.4 ms,
though both take ~4.7 ms when the operand repeats. A small secret-shared run in one process
(64 training steps, this machine) took 14.0-14.8 s of CPU instead of 23.5-23.7 s with that and
``protocol.heap`` (freed temporaries kept, not faulted in again); on Ray, one process per party,
the servers' compute fell ~10%.
Which kernel wins depends on the CPU and its BLAS (with AVX-512, int64 may), so ``chosen()``
times the candidates once per process and keeps the fastest.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from protocol import heap
from protocol.errors import ConfigError, ShapeError

Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: Environment variable that forces a kernel by name (benches, tests, a CPU calibration misjudges).
FORCE_ENV = "SPLITWIRE_RING_KERNEL"
MANTISSA = {torch.float64: 53, torch.float32: 24}
#: A small operand gets its own path only if chunks of at least 2^9 terms stay exact (the
#: protocol's inner dimensions are 500 and below, so such products are never cut).
MIN_CHUNK_BITS = 9
#: Chunks at least this long (2^7 terms) make two wide limbs cheaper than three narrow ones.
MIN_WIDE_CHUNK_BITS = 7


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype != np.uint64 or b.dtype != np.uint64:
        raise ShapeError(f"ring products take uint64 matrices, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ShapeError(f"cannot multiply ring matrices of shapes {a.shape} and {b.shape}")


def int64_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torch's int64 matmul: two's complement wraps, which is exactly arithmetic mod 2^64."""
    _check(a, b)
    ta = torch.from_numpy(np.ascontiguousarray(a).view(np.int64))
    tb = torch.from_numpy(np.ascontiguousarray(b).view(np.int64))
    return (ta @ tb).numpy().view(np.uint64)


_TWO_52 = 2.0**52
_TWO_52_BITS = np.float64(_TWO_52).view(np.uint64)


def _exact_int(part: np.ndarray) -> np.ndarray:
    """A floating-point product holding exact integers (below 2^mantissa in magnitude) as
    uint64, two's complement."""
    return part.astype(np.int64).view(np.uint64)


def _dot(x: torch.Tensor, y: torch.Tensor, chunk: int) -> np.ndarray:
    """x @ y mod 2^64, exactly: cut along k into chunks of ``chunk`` terms, each summed in
    floating point and converted before the chunks are added (k = 0: one empty product,
    zeros)."""
    k = x.shape[1]
    total: np.ndarray | None = None
    for lo in range(0, max(k, 1), chunk):
        ints = _exact_int((x[:, lo:lo + chunk] @ y[lo:lo + chunk]).numpy())
        total = ints if total is None else np.add(total, ints, out=total)
    assert total is not None
    return total


@dataclass(frozen=True)
class LimbKernel:
    """a @ b mod 2^64 from floating-point products of ``bits``-bit limbs (see the module)."""

    bits: int
    dtype: torch.dtype = torch.float64

    @property
    def name(self) -> str:
        return f"limb{self.bits}-{str(self.dtype).removeprefix('torch.')}"

    @property
    def limbs(self) -> int:
        return -(-64 // self.bits)

    @property
    def chunk(self) -> int:
        """Most terms one exact floating-point dot product may have."""
        return 1 << (MANTISSA[self.dtype] - 2 * self.bits)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.limbs) for j in range(self.limbs)
                if self.bits * (i + j) < 64]

    def split(self, x: np.ndarray) -> list[torch.Tensor]:
        """The limbs of x, lowest first, as exact floating-point matrices."""
        return list(torch.from_numpy(self.limb_array(x)))

    def limb_array(self, x: np.ndarray, order: tuple[int, ...] | None = None) -> np.ndarray:
        """The limbs of x stacked, (limbs, *x.shape), in floating point; ``order`` lists the
        limbs by index, lowest first by default."""
        x = np.asarray(x, np.uint64)
        mask = np.uint64((1 << self.bits) - 1)
        order = tuple(range(self.limbs)) if order is None else order
        if self.dtype == torch.float64:
            # Without AVX-512DQ x86 has no vector int64 -> float64 conversion, so numpy's
            # cast runs scalar. OR-ing a limb (< 2^52) into the bits of 2^52 gives the float
            # 2^52 + limb exactly; one vector subtraction leaves the limb (0.65 ms against
            # 0.79 ms for 500x500 here).
            limbs = np.empty((len(order), *x.shape), np.uint64)
            for slot, i in enumerate(order):
                if i == 0:  # the lowest limb needs no shift, the highest no mask
                    np.bitwise_and(x, mask, out=limbs[slot])
                elif self.bits * (i + 1) >= 64:
                    np.right_shift(x, np.uint64(self.bits * i), out=limbs[slot])
                else:
                    np.bitwise_and(np.right_shift(x, np.uint64(self.bits * i),
                                                  out=limbs[slot]), mask, out=limbs[slot])
            np.bitwise_or(limbs, _TWO_52_BITS, out=limbs)
            floats = limbs.view(np.float64)
            floats -= _TWO_52
            return floats
        shifted, dtype = np.empty(x.shape, np.uint64), np.float32
        limbs = np.empty((len(order), *x.shape), dtype)  # numpy's uint64 shift is logical
        for slot, i in enumerate(order):
            np.bitwise_and(np.right_shift(x, np.uint64(self.bits * i), out=shifted), mask,
                           out=shifted)
            limbs[slot] = shifted.view(np.int64)  # below 2^63: int64 converts faster
        return limbs

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check(a, b)
        limit = MANTISSA[self.dtype] - MIN_CHUNK_BITS - self.bits
        small_b, small_a = _signed_bits_up_to(b, limit), _signed_bits_up_to(a, limit)
        if small_b is not None and (small_a is None or small_b <= small_a):
            return self._small(a, b, small_b)
        if small_a is not None:
            return np.ascontiguousarray(self._small(b.T, a.T, small_a).T)
        return self._general(a, b)

    def _general(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        la, lb = self.split(a), self.split(b)
        by_shift: dict[int, np.ndarray] = {}  # the pairs' sums, one per shift i + j
        for i, j in self.pairs:
            part = _dot(la[i], lb[j], self.chunk)
            if i + j in by_shift:
                by_shift[i + j] += part
            else:
                by_shift[i + j] = part
        out = np.zeros((a.shape[0], b.shape[1]), np.uint64)
        for t, total in by_shift.items():
            out += np.left_shift(total, np.uint64(self.bits * t), out=total)
        return out

    def _small(self, a: np.ndarray, b: np.ndarray, b_bits: int) -> np.ndarray:
        """b's entries, read as signed integers, are below 2^b_bits in magnitude (public
        fixed-point weights are): b stays one signed limb, so only a is split and the product
        takes ``limbs`` floating-point products instead of ``len(pairs)`` (a's limbs stacked
        into one matrix, so one BLAS call per chunk of k). A term is below
        2^(bits + b_bits) in magnitude, so ``2^(mantissa - bits - b_bits)`` of them add up
        exactly in any order (every partial sum is bounded by the sum of magnitudes)."""
        k = a.shape[1]
        mantissa = MANTISSA[self.dtype]
        # Two 32-bit limbs of a instead of three, where chunks of 2^7 terms stay exact: fewer
        # products, each cut along k (public weights of fixed point with 16 fractional bits
        # and |w| < 0.25 have b_bits <= 14).
        bits = 32 if mantissa - 32 - b_bits >= MIN_WIDE_CHUNK_BITS else self.bits
        kernel = LimbKernel(bits, self.dtype)
        m, n = a.shape[0], b.shape[1]
        # (limbs * m, k): limb i holds rows i m .. (i + 1) m - 1.
        la = torch.from_numpy(kernel.limb_array(a)).reshape(kernel.limbs * m, k)
        lb = torch.from_numpy(np.ascontiguousarray(b).view(np.int64)).to(self.dtype)
        limbs = _dot(la, lb, 1 << (mantissa - bits - b_bits)).reshape(kernel.limbs, m, n)
        out = limbs[0]
        for i in range(1, kernel.limbs):
            out += np.left_shift(limbs[i], np.uint64(bits * i), out=limbs[i])
        return out


@dataclass(frozen=True)
class KaratsubaKernel(LimbKernel):
    """22-bit limbs as ``LimbKernel(22)``, five float64 products instead of six, in four BLAS
    calls, through torch's BLAS (``blas="torch"``) or numpy's (``"numpy"``).

    With limbs a = a0 + a1 2^22 + a2 2^44 (22, 22 and 20 bits), and likewise b, and inner
    dimensions of at most 512 (longer ones are cut into such chunks, each an exact ring
    product, added mod 2^64):

    - ``t0 = a0 b0`` and ``p11 = a1 b1``: terms below 2^44, 512 of them stay below 2^53;
    - ``a0 b1 + a1 b0 = (a0 - a1)(b1 - b0) + t0 + p11`` (Karatsuba): the differences are
      signed but below 2^22 in magnitude, so their terms are below 2^44 as well, and a partial
      sum, whatever order BLAS adds in, is bounded by the sum of magnitudes;
    - ``q = a0 b2 + a2 b0`` (only needed mod 2^20, as it is shifted by 44): terms below 2^42,
      1024 of them below 2^52, so the two products add up exactly in float64.

    a0 b0 and a2 b0 share b0, so they are one product of the stacked [a0; a2] (b0 is packed
    by BLAS once: five products with distinct right operands took 13% (OpenBLAS) to 43%
    (MKL) longer here than five with one repeated).
    With d = (a0 - a1)(b1 - b0), a @ b = t0 + (d + t0 + p11) 2^22 + (q + p11) 2^44 mod 2^64,
    in uint64 (which wraps by itself). Timings: the module's docstring.
    """

    bits: int = 22
    blas: Literal["torch", "numpy"] = "torch"

    @property
    def name(self) -> str:
        return "karatsuba22-float64" + ("" if self.blas == "torch" else f"-{self.blas}")

    def _general(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        k = a.shape[1]
        if k <= KARATSUBA_CHUNK:
            return self._chunk(a, b)
        out = np.zeros((a.shape[0], b.shape[1]), np.uint64)
        for lo in range(0, k, KARATSUBA_CHUNK):
            out += self._chunk(a[:, lo:lo + KARATSUBA_CHUNK], b[lo:lo + KARATSUBA_CHUNK])
        return out

    def _chunk(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        m = a.shape[0]
        mm = _torch_mm if self.blas == "torch" else _numpy_mm()
        limbs_a = self.limb_array(a, order=(0, 2, 1))  # [a0; a2] is one (2m, k) matrix
        a0, a2, a1 = limbs_a
        b0, b1, b2 = self.limb_array(b)
        low = mm(limbs_a[:2].reshape(2 * m, -1), b0)  # a0 b0 over a2 b0
        low[m:] += mm(a0, b2)  # q
        p11 = mm(a1, b1)
        # The differences overwrite limbs no longer needed: no new (k, n) temporaries.
        d = mm(np.subtract(a0, a1, out=a1), np.subtract(b1, b0, out=b1))
        low_ints, p11_ints, t1 = (_exact_int(x) for x in (low, p11, d))
        t0, t2 = low_ints[:m], low_ints[m:]
        t1 += t0
        t1 += p11_ints
        t2 += p11_ints
        t0 += np.left_shift(t1, np.uint64(22), out=t1)
        t0 += np.left_shift(t2, np.uint64(44), out=t2)
        return t0


#: Most terms of one Karatsuba chunk (see ``KaratsubaKernel``): 512 (2^22)^2 <= 2^53.
KARATSUBA_CHUNK = 1 << 9


def _torch_mm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (torch.from_numpy(x) @ torch.from_numpy(y)).numpy()


_blas_limited = False
_blas_lock = threading.Lock()  # not ``_lock``: the calibration holds that one while it runs


def _numpy_mm() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """numpy's matmul, its BLAS held to one thread in this process (once): roles share few
    cores, as torch's one intra-op thread (``torch.set_num_threads(1)``) does, and a BLAS
    that starts a thread per core and spins them between calls would take the others'."""
    global _blas_limited
    if not _blas_limited:
        with _blas_lock:
            if not _blas_limited:
                from threadpoolctl import threadpool_limits

                threadpool_limits(1, user_api="blas")
                _blas_limited = True
    return np.matmul


#: Entries ``_signed_bits_up_to`` looks at before it scans a whole operand.
PROBE = 64


def _signed_bits_up_to(x: np.ndarray, limit: int) -> int | None:
    """``_signed_bits(x)`` if it is at most ``limit``, else None. A few entries are looked at
    first: a Beaver product's operands are uniformly random ring elements (one is within the
    22-bit limbs' limit with probability 2^-41), so only operands that may be small, such as
    public fixed-point weights, pay for the full scan (two passes over the matrix: 2-3% of a
    shared-weight training step's time)."""
    if _signed_bits(x.flat[:PROBE]) > limit:  # the first entries in C order, any layout
        return None
    bits = _signed_bits(x)
    return bits if bits <= limit else None


def _signed_bits(x: np.ndarray) -> int:
    """Least s with every entry of x, read as a signed int64, in [-2^s, 2^s)."""
    if x.size == 0:
        return 0
    v = x.view(np.int64)
    lo, hi = int(v.min()), int(v.max())
    return max(hi.bit_length(), (-lo - 1).bit_length())


KERNELS: dict[str, Kernel] = {
    "int64": int64_matmul,
    **{k.name: k for k in (KaratsubaKernel(), KaratsubaKernel(blas="numpy"), LimbKernel(22),
                           LimbKernel(16), LimbKernel(8, torch.float32))},
}
#: What the calibration chooses among. 8-bit limbs over float32 are exact and tested, but
#: their 36 products lose to 6 float64 ones wherever float32 is at most 2x float64 (AVX2, AVX-512,
#: NEON alike): measured here, 60 ms against 13 ms; a calibration on a loaded machine once
#: picked it anyway, so it is only used when forced.
CANDIDATES = ("int64", "karatsuba22-float64", "karatsuba22-float64-numpy", "limb22-float64",
              "limb16-float64")
#: The calibration products: a batch of 64 through Linear(500, 500) (forward and input
#: gradient) and that layer's weight gradient, the protocol's commonest large products. Their
#: costs differ in kind (the first is all BLAS, the second half output conversions), and the
#: kernels rank differently on each, so the choice is by their sum (about 0.5 s in all).
CALIBRATION_SHAPES = ((64, 500, 500), (500, 64, 500))

_lock = threading.Lock()
_chosen: tuple[str, dict[str, float]] | None = None


#: After its first two rounds the calibration stops timing a kernel this many times slower
#: than the best so far (its best of two stands): a clear loser needs no best-of-five. On the
#: 2-core AMD EPYC with AVX-512, int64 took 3 ms for both products and the limb kernels
#: 11-50 ms; the calibration took 0.32-0.45 s of each multiplying role's start-up on an idle
#: machine (0.96 s beside other work), 0.14-0.16 s pruned. Not after one round: a kernel's
#: first call can pay a one-off cost (numpy's BLAS being held to one thread: 124 ms against
#: 11 ms for the next call, measured), and it is the winner on some CPUs.
PRUNE_FACTOR = 2.0
PRUNE_AFTER = 2


def calibrate(shape: tuple[int, int, int] = CALIBRATION_SHAPES[0], rounds: int = 5,
              names: tuple[str, ...] = CANDIDATES,
              prune: float | None = None) -> dict[str, float]:
    """Best seconds of each kernel in ``names`` on one product of ``shape`` (m, k, n).

    The kernels take turns, ``rounds`` times, so a burst of load from another process hits
    all of them rather than the one that happened to be running. With ``prune``, a kernel
    more than ``prune`` times slower than the fastest after ``PRUNE_AFTER`` rounds is not
    timed again.
    """
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, (m, k), dtype=np.uint64)
    b = rng.integers(0, 2**64, (k, n), dtype=np.uint64)
    want = int64_matmul(a, b)
    seconds = dict.fromkeys(names, float("inf"))
    timed = tuple(names)
    for round_ in range(rounds):
        if round_ == PRUNE_AFTER and prune is not None:
            fastest = min(seconds.values())
            timed = tuple(name for name in names if seconds[name] <= prune * fastest)
        for name in timed:
            t = time.perf_counter()
            got = KERNELS[name](a, b)
            seconds[name] = min(seconds[name], time.perf_counter() - t)
            if not np.array_equal(got, want):  # never pick a kernel that disagrees
                raise RuntimeError(f"ring kernel {name} disagrees with int64")
    return seconds


def forced_kernel() -> str | None:
    """The kernel ``SPLITWIRE_RING_KERNEL`` names, if set; ConfigError if it names none (the
    CLI checks it before any role starts, where the error would only drop a frame)."""
    forced = os.environ.get(FORCE_ENV)
    if forced and forced not in KERNELS:
        raise ConfigError(f"{FORCE_ENV}={forced!r}: no such ring kernel "
                          f"(one of {', '.join(KERNELS)})")
    return forced or None


def chosen() -> tuple[str, dict[str, float]]:
    """(name of the kernel in use, the calibration's seconds per kernel), once per process.

    ``SPLITWIRE_RING_KERNEL=<name>`` forces a kernel and skips the calibration.
    """
    global _chosen
    with _lock:
        if _chosen is None:
            # A process that multiplies ring matrices keeps its freed temporaries (its first
            # product gets here first): protocol.heap.
            heap.keep_freed_memory()
            forced = forced_kernel()
            if forced:
                _chosen = (forced, {})
            else:
                seconds: dict[str, float] = {}
                for shape in CALIBRATION_SHAPES:
                    for name, best in calibrate(shape, prune=PRUNE_FACTOR).items():
                        seconds[name] = seconds.get(name, 0.0) + best
                _chosen = (min(seconds, key=seconds.__getitem__), seconds)
        return _chosen
