"""Tests for how the training set is shared among data owners (actors.partition)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.partition import Partition, label_counts, parse_partition, split_indices
from protocol.errors import ConfigError


def _labels(seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(10), 400)
    np.random.default_rng(seed).shuffle(labels)
    return labels


LABELS = _labels()


def _check_partition(parts: list[np.ndarray], n: int, owners: int, min_size: int) -> None:
    assert len(parts) == owners
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted ascending, no duplicates
        assert len(part) >= min_size
    merged = np.concatenate(parts)
    assert len(merged) == n
    assert np.array_equal(np.sort(merged), np.arange(n))


def _mean_max_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    counts = label_counts(labels, parts)
    sizes = counts.sum(axis=1)
    keep = sizes > 0
    return float((counts[keep].max(axis=1) / sizes[keep]).mean())


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("iid", "iid"),
        ("dirichlet:0.5", "dirichlet:0.5"),
        ("dirichlet:1e-1", "dirichlet:0.1"),
        ("dirichlet:1000", "dirichlet:1000.0"),
        ("dirichlet:3.25", "dirichlet:3.25"),
    ],
)
def test_parse_round_trips(text: str, canonical: str) -> None:
    spec = parse_partition(text)
    assert str(spec) == canonical
    assert parse_partition(str(spec)) == spec


def test_parse_fields() -> None:
    assert parse_partition("iid") == Partition("iid")
    assert parse_partition("dirichlet:0.5") == Partition("dirichlet", 0.5)


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_parse_round_trips_any_alpha(alpha: float) -> None:
    spec = parse_partition(f"dirichlet:{alpha!r}")
    assert spec.alpha == alpha
    assert parse_partition(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "foo",
        "IID",
        "iid:1",
        "dirichlet",
        "dirichlet:",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:-inf",
        "dirichlet:0",
        "dirichlet:0.0",
        "dirichlet:-1",
        "dirichlet:abc",
        "dirichlet:0.5:1",
        "dir:0.5",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--partition") as info:
        parse_partition(text)
    message = str(info.value)
    assert "\n" not in message
    assert "iid or dirichlet:ALPHA" in message
    assert repr(text) in message


@pytest.mark.parametrize(
    ("kind", "alpha"),
    [("iid", 0.5), ("dirichlet", None), ("dirichlet", 0.0), ("dirichlet", float("nan")), ("x", 1)],
)
def test_partition_constructor_validates(kind: str, alpha: float | None) -> None:
    with pytest.raises(ConfigError):
        Partition(kind, alpha)


# --- splitting -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    owners=st.integers(min_value=1, max_value=50),
    alpha=st.floats(min_value=0.05, max_value=10.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    min_size=st.integers(min_value=0, max_value=20),
)
def test_dirichlet_disjoint_covering_min_size(
    owners: int, alpha: float, seed: int, min_size: int
) -> None:
    parts = split_indices(LABELS, owners, Partition("dirichlet", alpha), seed, min_size)
    _check_partition(parts, len(LABELS), owners, min_size)


@settings(max_examples=60, deadline=None)
@given(
    owners=st.integers(min_value=1, max_value=50),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    n=st.integers(min_value=50, max_value=600),
)
def test_iid_disjoint_covering_near_equal(owners: int, seed: int, n: int) -> None:
    labels = LABELS[:n]
    parts = split_indices(labels, owners, Partition("iid"), seed)
    _check_partition(parts, n, owners, 1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_min_size_is_enforced_at_tiny_alpha() -> None:
    parts = split_indices(LABELS, 40, Partition("dirichlet", 0.01), seed=3, min_size=50)
    _check_partition(parts, len(LABELS), 40, 50)


def test_exact_fit_min_size() -> None:
    labels = LABELS[:100]
    parts = split_indices(labels, 10, Partition("dirichlet", 0.05), seed=1, min_size=10)
    assert [len(p) for p in parts] == [10] * 10
    _check_partition(parts, 100, 10, 10)


@pytest.mark.parametrize("spec", [Partition("iid"), Partition("dirichlet", 0.3)])
def test_deterministic_per_seed(spec: Partition) -> None:
    a = split_indices(LABELS, 8, spec, seed=11)
    b = split_indices(LABELS, 8, spec, seed=11)
    c = split_indices(LABELS, 8, spec, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _skew(spec: Partition, owners: int = 10, seeds: range = range(5)) -> float:
    """Mean over seeds of the mean per-owner fraction of its most common class."""
    return float(
        np.mean([_mean_max_fraction(LABELS, split_indices(LABELS, owners, spec, s)) for s in seeds])
    )


def test_small_alpha_is_skewed_and_large_alpha_is_near_iid() -> None:
    iid = _skew(Partition("iid"))
    small = _skew(Partition("dirichlet", 0.1))
    large = _skew(Partition("dirichlet", 1000.0))
    # iid: every owner sees ~10% of each class, so its top class is only a little above 0.1.
    assert iid < 0.2
    assert small > iid + 0.3
    assert abs(large - iid) < 0.05


def test_label_counts_shape_and_total() -> None:
    parts = split_indices(LABELS, 7, Partition("dirichlet", 0.5), seed=0)
    counts = label_counts(LABELS, parts)
    assert counts.shape == (7, 10)
    assert counts.sum() == len(LABELS)
    assert np.array_equal(counts.sum(axis=0), np.full(10, 400))
    assert np.array_equal(counts.sum(axis=1), [len(p) for p in parts])


@pytest.mark.parametrize(
    ("n", "owners", "min_size"), [(10, 11, 1), (100, 10, 11), (0, 1, 1), (50, 0, 1)]
)
def test_impossible_splits_raise(n: int, owners: int, min_size: int) -> None:
    for spec in (Partition("iid"), Partition("dirichlet", 0.5)):
        with pytest.raises(ConfigError):
            split_indices(LABELS[:n], owners, spec, seed=0, min_size=min_size)


def test_single_owner_gets_everything() -> None:
    parts = split_indices(LABELS, 1, Partition("dirichlet", 0.1), seed=0)
    assert np.array_equal(parts[0], np.arange(len(LABELS)))
