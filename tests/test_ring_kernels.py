"""Every ring-product kernel is exact mod 2^64 (against Python integers), and the dispatch."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocol import ring, ring_kernels
from protocol.errors import ConfigError, ShapeError

TOP = 2**64 - 1
NAMES = list(ring_kernels.KERNELS)
#: Ring elements with the extremes (0, 1, 2^63, 2^64 - 1) and small signed values (public
#: fixed-point weights, which take the small-operand path) drawn often.
ELEMENTS = st.one_of(st.sampled_from([0, 1, 2**63 - 1, 2**63, TOP]),
                     st.integers(0, TOP),
                     st.integers(-(2**20), 2**20).map(lambda v: v % 2**64))


def exact(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """a @ b mod 2^64 with Python's unbounded integers."""
    cols = [[int(v) for v in b[:, c]] for c in range(b.shape[1])]
    return [[sum(int(x) * y for x, y in zip(row, col, strict=True)) % 2**64 for col in cols]
            for row in a]


def matrices(m: int, k: int, n: int):
    return st.tuples(arrays(np.uint64, (m, k), elements=ELEMENTS),
                     arrays(np.uint64, (k, n), elements=ELEMENTS))


@st.composite
def pairs(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(0, 40)), draw(st.integers(1, 4))
    return draw(matrices(m, k, n))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(ab=pairs())
def test_every_kernel_is_exact_against_python_ints(name, ab):
    a, b = ab
    got = ring_kernels.KERNELS[name](a, b)
    assert got.dtype == np.uint64 and got.shape == (a.shape[0], b.shape[1])
    assert got.tolist() == exact(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_worst_case_inner_dimension_all_bits_set(name):
    # Every limb at its maximum and k = 2000 (four chunks of 512 for 22-bit limbs): one dot
    # product of 2000 terms of (2^22 - 1)^2 is beyond 2^53, so an unchunked float64 product
    # would round. All-ones is -1 as a signed integer (the small-operand path), so one entry
    # of 2^63 - 1 keeps both operands on the general path with all low limbs still maximal.
    k = 2000
    a = np.full((2, k), TOP, np.uint64)
    b = np.full((k, 3), TOP, np.uint64)
    a[0, 0] = b[0, 0] = 2**63 - 1
    b[1:, 2] = 2**63  # and a column whose low limbs are all zero
    assert ring_kernels._signed_bits(a) == ring_kernels._signed_bits(b) == 63
    got = ring_kernels.KERNELS[name](a, b)
    assert got.tolist() == exact(a, b)
    assert ring_kernels.KERNELS[name](a[1:], b[:, 1:2]).tolist() == [[k]]  # (-1)(-1) k


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("karatsuba")])
def test_karatsuba_differences_at_their_extremes(name):
    # The Karatsuba kernel's signed term (a0 - a1)(b1 - b0) is largest with a0 and b1 maximal
    # and a1 = b0 = 0: k = 2000 such terms (all (2^22 - 1)^2, one sign) exceed 2^53 four times
    # over, so only chunks of at most 512 keep the product exact; the opposite signs as well.
    # Bit 63 stays set so neither operand takes the small-operand path.
    k, low = 2000, (1 << 22) - 1
    a = np.full((2, k), low | (1 << 63), np.uint64)
    a[1] = (low << 22) | (1 << 63)  # a1 maximal, a0 = 0: the difference turns negative
    b = np.full((k, 2), (low << 22) | (1 << 63), np.uint64)
    b[:, 1] = low | (1 << 63)
    kernel = ring_kernels.KERNELS[name]
    assert ring_kernels._signed_bits(a) == ring_kernels._signed_bits(b) == 63
    assert kernel(a, b).tolist() == exact(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_large_random_product_matches_int64(name):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**64, (17, 1100), dtype=np.uint64)
    b = rng.integers(0, 2**64, (1100, 9), dtype=np.uint64)
    want = ring_kernels.int64_matmul(a, b)
    assert np.array_equal(ring_kernels.KERNELS[name](a, b), want)
    assert np.array_equal(ring_kernels.KERNELS[name](a, b.astype(np.int64)
                                                   .clip(-5, 5).view(np.uint64)),
                          ring_kernels.int64_matmul(a, b.astype(np.int64).clip(-5, 5)
                                                    .view(np.uint64)))


@pytest.mark.parametrize("name", NAMES)
def test_small_operand_at_the_edge_of_its_path(name):
    # Signed entries of magnitude up to 2^s with s just inside and just outside the small
    # path's bound, on either side, with the worst limb values and a long inner dimension.
    kernel = ring_kernels.KERNELS[name]
    k = 1500
    for s in (1, 13, 14, 15, 17, 21, 22, 23, 31, 63):  # 14/15: two limbs or three
        small = np.full((k, 2), (-(2**s)) % 2**64, np.uint64)  # both ends of the range;
        small[:, 0] = 2**s - 1  # odd terms, so sums beyond 2^53 would round
        assert ring_kernels._signed_bits(small) == s
        big = np.full((3, k), TOP, np.uint64)
        big[0, 0] = 2**63 - 1  # big as a signed integer too (TOP alone reads as -1)
        assert kernel(big, small).tolist() == exact(big, small), s
        assert kernel(small.T.copy(), big.T.copy()).tolist() == exact(small.T, big.T), s


def test_limb_kernel_bounds():
    k22 = ring_kernels.LimbKernel(22)
    assert (k22.limbs, len(k22.pairs), k22.chunk) == (3, 6, 512)
    k16 = ring_kernels.LimbKernel(16)
    assert (k16.limbs, len(k16.pairs), k16.chunk) == (4, 10, 2**21)
    k8 = ring_kernels.LimbKernel(8, torch.float32)
    assert (k8.limbs, len(k8.pairs), k8.chunk) == (8, 36, 256)
    for kernel in (k22, k16, k8):  # a chunk's sum of maximal limb products is exact
        mantissa = ring_kernels.MANTISSA[kernel.dtype]
        assert kernel.chunk * (2**kernel.bits - 1) ** 2 <= 2**mantissa


def test_kernels_refuse_bad_operands():
    a = np.zeros((2, 3), np.uint64)
    for kernel in ring_kernels.KERNELS.values():
        with pytest.raises(ShapeError, match="shapes"):
            kernel(a, a)
        with pytest.raises(ShapeError, match="uint64"):
            kernel(a.astype(np.int64), a.T.copy())


def test_dispatch_names_a_kernel_and_uses_it(monkeypatch):
    name = ring.kernel_name()
    assert name in ring_kernels.KERNELS
    assert ring.kernel_name() == name  # cached: the calibration runs once per process
    calls = []
    real = ring_kernels.KERNELS[name]
    monkeypatch.setitem(ring_kernels.KERNELS, name, lambda a, b: calls.append(1) or real(a, b))
    a = np.arange(6, dtype=np.uint64).reshape(2, 3)
    assert ring.matmul(a, a.T.copy()).tolist() == exact(a, a.T)
    assert calls == [1]


def test_calibration_times_every_kernel_and_picks_the_fastest(monkeypatch):
    seconds = ring_kernels.calibrate((4, 30, 4), rounds=1)
    assert set(seconds) == set(ring_kernels.CANDIDATES) and all(s > 0 for s in seconds.values())
    assert set(ring_kernels.CANDIDATES) <= set(ring_kernels.KERNELS)
    monkeypatch.setitem(ring_kernels.KERNELS, "int64", lambda a, b: np.zeros((4, 4), np.uint64))
    with pytest.raises(RuntimeError, match="disagrees"):
        ring_kernels.calibrate((4, 30, 4), rounds=1)
    monkeypatch.setattr(ring_kernels, "_chosen", None)
    timed: list[tuple[int, int, int]] = []
    fake = {(64, 500, 500): {"int64": 1.0, "limb16-float64": 2.0},  # int64 wins this one,
            (500, 64, 500): {"int64": 3.0, "limb16-float64": 1.0}}  # limb16 the sum
    monkeypatch.setattr(ring_kernels, "CALIBRATION_SHAPES", tuple(fake))
    monkeypatch.setattr(ring_kernels, "calibrate",
                        lambda shape, prune=None: timed.append(shape) or fake[shape])
    monkeypatch.delenv(ring_kernels.FORCE_ENV, raising=False)
    assert ring_kernels.chosen() == ("limb16-float64", {"int64": 4.0, "limb16-float64": 3.0})
    assert timed == list(fake)


def test_calibration_stops_timing_a_clear_loser_after_two_rounds(monkeypatch):
    calls = {"fast": 0, "slow": 0}

    def kernel(name, delay):
        def run(a, b):
            calls[name] += 1
            time.sleep(delay)
            return ring_kernels.int64_matmul(a, b)
        return run

    monkeypatch.setitem(ring_kernels.KERNELS, "fast", kernel("fast", 0.0))
    monkeypatch.setitem(ring_kernels.KERNELS, "slow", kernel("slow", 0.05))
    seconds = ring_kernels.calibrate((4, 30, 4), rounds=4, names=("fast", "slow"), prune=2.0)
    assert calls == {"fast": 4, "slow": ring_kernels.PRUNE_AFTER}
    assert seconds["slow"] >= 0.05 > seconds["fast"]
    calls.update(fast=0, slow=0)
    ring_kernels.calibrate((4, 30, 4), rounds=4, names=("fast", "slow"))  # no pruning
    assert calls == {"fast": 4, "slow": 4}


def test_forcing_a_kernel_by_environment(monkeypatch):
    monkeypatch.setattr(ring_kernels, "_chosen", None)
    monkeypatch.setenv(ring_kernels.FORCE_ENV, "int64")
    assert ring_kernels.chosen() == ("int64", {})
    monkeypatch.setattr(ring_kernels, "_chosen", None)
    monkeypatch.setenv(ring_kernels.FORCE_ENV, "fastest-please")
    with pytest.raises(ConfigError, match="no such ring kernel"):
        ring_kernels.chosen()


def test_signed_bits_up_to_agrees_with_the_full_scan():
    # The probe only ever skips the scan where the answer is "too large": the result equals
    # the definition for matrices small everywhere, large at the start, large only after the
    # probe, and transposed (non-contiguous) views of each.
    rng = np.random.default_rng(3)
    small = (rng.integers(-(2**20), 2**20, (300, 70))).astype(np.int64).view(np.uint64)
    late = small.copy()
    late[-1, -1] = np.uint64(2**40)
    early = small.copy()
    early[0, 0] = np.uint64(2**40)
    uniform = rng.integers(0, 2**64, (300, 70), dtype=np.uint64)
    for x in (small, late, early, uniform):
        for view in (x, x.T):
            for limit in (19, 20, 21, 40, 63):
                full = ring_kernels._signed_bits(view)
                want = full if full <= limit else None
                assert ring_kernels._signed_bits_up_to(view, limit) == want
