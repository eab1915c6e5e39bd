"""Ring arithmetic, fixed point and additive shares in Z_2^64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from protocol import ring
from protocol.errors import ShapeError

F = ring.DEFAULT_FRAC_BITS
ULP = 2.0**-F
REALS = st.floats(min_value=-(2.0**40), max_value=2.0**40, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(REALS, min_size=1, max_size=50))
def test_share_reveal_round_trip_over_the_fixed_point_range(values):
    x = np.array(values)
    s0, s1 = ring.share(ring.encode(x))
    back = ring.decode(ring.reveal(s0, s1))
    assert np.all(np.abs(back - x) <= ULP / 2 + 1e-9 * np.abs(x))


def test_extremes_zero_and_negatives():
    x = np.array([0.0, -0.0, ULP, -ULP, 2.0**45, -(2.0**45), -1.5, 3.25])
    assert np.array_equal(ring.decode(ring.reveal(*ring.share(ring.encode(x)))), x)
    with pytest.raises(ShapeError, match="too large"):
        ring.encode(np.array([2.0**46]))
    with pytest.raises(ShapeError, match="NaN"):
        ring.encode(np.array([np.nan]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(REALS, REALS), min_size=1, max_size=30))
def test_addition_on_shares(pairs):
    x, y = (np.array(v) for v in zip(*pairs, strict=True))
    x0, x1 = ring.share(ring.encode(x))
    y0, y1 = ring.share(ring.encode(y))
    total = ring.decode(ring.reveal(x0 + y0, x1 + y1))
    assert np.all(np.abs(total - (x + y)) <= ULP + 1e-9 * np.abs(x + y))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1000, 1000), st.floats(-1000, 1000)), min_size=1,
                max_size=30))
def test_product_then_truncation_is_within_the_documented_bound(pairs):
    x, y = (np.array(v) for v in zip(*pairs, strict=True))
    x0, x1 = ring.share(ring.encode(x))
    yr = ring.encode(y)  # a public multiplier: local product, then the local truncation
    z = ring.reveal(ring.truncate(x0 * yr, 0), ring.truncate(x1 * yr, 1))
    exact = ring.decode(ring.encode(x)) * ring.decode(yr)
    error = np.abs(ring.decode(z) - exact)
    # A product here is up to 2^52 ring units, so a share pair straddles the wrap point with
    # probability up to 2^-12 per element (the module's documented bound): such an element is
    # off by exactly the documented wrap error, never by anything in between.
    wrapped = np.abs(error - ring.wrap_error()) <= 2 * ULP
    assert np.all((error <= 2 * ULP) | wrapped)
    assert wrapped.sum() <= 2  # 3 wraps of 30 at <= 2^-12 each: p < 6e-8, 1e-5 over 200 runs


def test_truncation_fails_only_as_rarely_as_documented():
    # |x| < 2^30 ring units: failure probability <= 2^(31 - 64) per element; 10^6 samples
    x = np.random.default_rng(0).integers(-(2**30), 2**30, 1_000_000).astype(np.int64)
    s0, s1 = ring.share(x.view(np.uint64))
    t = ring.reveal(ring.truncate(s0, 0), ring.truncate(s1, 1)).view(np.int64)
    assert np.abs(t - (x >> F)).max() <= 1


def test_each_share_alone_is_uniform_bytes():
    secret = ring.encode(np.zeros(200_000))  # the most structured secret there is
    for s in ring.share(secret):
        counts = np.bincount(s.view(np.uint8), minlength=256)
        assert chisquare(counts).pvalue > 1e-4
        assert not np.array_equal(s, secret)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 5), st.integers(0, 2**32))
def test_ring_matmul_is_exact_mod_2_64(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, (m, k), dtype=np.uint64)
    b = rng.integers(0, 2**64, (k, n), dtype=np.uint64)
    want = [[sum(int(a[i, j]) * int(b[j, c]) for j in range(k)) % 2**64 for c in range(n)]
            for i in range(m)]
    assert ring.matmul(a, b).tolist() == want


def test_prg_is_seeded_and_distinct():
    seed = bytes(range(32))
    a, b = ring.SecureRandom(seed).uint64((100,)), ring.SecureRandom(seed).uint64((100,))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, ring.SecureRandom().uint64((100,)))
    with pytest.raises(ValueError):
        ring.SecureRandom(b"short")


def test_secure_random_is_the_aes_ctr_keystream_across_draws_larger_than_its_zero_block():
    # Draws bigger than the 1 MB zero block are encrypted in pieces; the stream must run on
    # exactly as one AES-256-CTR encryption of zeros would, whatever the sizes drawn.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(32))
    sizes = [(3,), (500, 500), (1,), (131072,), (131073,), (7, 11)]
    rng = ring.SecureRandom(seed)
    got = b"".join(rng.uint64(shape).tobytes() for shape in sizes)
    total = 8 * sum(int(np.prod(shape)) for shape in sizes)
    want = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor().update(bytes(total))
    assert got == want
