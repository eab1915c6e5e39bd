"""How the training set is shared out among several data owners (``--partition``).

Split learning with many owners is only interesting when their data differ: with an ``iid``
split every owner sees the same label mix, while real owners (hospitals, phones) hold skewed
data, which changes both what the model learns and what leaks from each owner's activations.
``dirichlet:ALPHA`` is the standard label-skew scheme (Hsu et al. 2019, as in Flower's
``DirichletPartitioner``): small ALPHA gives each owner a few dominant classes, large ALPHA
tends to iid. Plain numpy and seeded, so a run is reproducible and the split is testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from protocol.errors import ConfigError, ShapeError

_FORMS = "--partition must be iid or dirichlet:ALPHA with ALPHA > 0"


@dataclass(frozen=True)
class Partition:
    """A partition scheme: ``kind`` is ``"iid"`` or ``"dirichlet"`` (which needs ``alpha``)."""

    kind: str
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "iid" and self.alpha is None:
            return
        if self.kind == "dirichlet" and _valid_alpha(self.alpha):
            return
        raise ConfigError(f"{_FORMS}, got {self!r}")

    def __str__(self) -> str:
        return "iid" if self.alpha is None else f"dirichlet:{float(self.alpha)!r}"


def _valid_alpha(alpha: object) -> bool:
    return isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0


def parse_partition(text: str) -> Partition:
    """Parse the CLI text ``iid`` or ``dirichlet:ALPHA`` (ALPHA a finite float > 0)."""
    if text == "iid":
        return Partition("iid")
    kind, sep, rest = text.partition(":")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(rest)
        except ValueError:
            alpha = math.nan
        if _valid_alpha(alpha):
            return Partition("dirichlet", alpha)
    raise ConfigError(f"{_FORMS}, got {text!r}")


def split_indices(
    labels: np.ndarray, owners: int, spec: Partition, seed: int, min_size: int = 1
) -> list[NDArray[np.int64]]:
    """Share the indices of ``labels`` among ``owners``: disjoint, sorted int64 arrays that
    together cover every index exactly once. Deterministic for a given ``seed``.

    ``iid``: a seeded permutation cut into contiguous parts whose sizes differ by at most 1.
    ``dirichlet``: per class (in sorted label order) the shuffled indices are cut by proportions
    drawn from Dir(alpha * ones(owners)). Afterwards every owner below ``min_size`` is topped
    up, owner by owner in index order, with items drawn at random (same seeded generator) from
    the currently largest owner (lowest index on ties), which always has spare items because
    ``owners * min_size <= len(labels)`` is required.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ShapeError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if owners < 1 or min_size < 0:
        raise ConfigError(f"need owners >= 1 and min_size >= 0, got {owners} and {min_size}")
    if owners * min_size > n:
        raise ConfigError(
            f"cannot give {owners} owners at least {min_size} items each from {n} examples"
        )
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n).astype(np.int64), owners)
        return [np.sort(p) for p in parts]

    alpha = float(spec.alpha or 0.0)  # Partition guarantees alpha > 0 for dirichlet
    buckets: list[list[NDArray[np.int64]]] = [[] for _ in range(owners)]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls).astype(np.int64)
        rng.shuffle(idx)
        props = rng.dirichlet(np.full(owners, alpha))
        if not np.all(np.isfinite(props)) or props.sum() <= 0:  # underflow at tiny alpha
            props = np.eye(owners)[rng.integers(owners)]
        cuts = np.floor(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for owner, chunk in enumerate(np.split(idx, np.clip(cuts, 0, len(idx)))):
            buckets[owner].append(chunk)
    parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]

    for owner in range(owners):
        while len(parts[owner]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            spare = len(parts[donor]) - min_size
            take = min(min_size - len(parts[owner]), spare)
            pick = np.zeros(len(parts[donor]), dtype=bool)
            pick[rng.choice(len(parts[donor]), size=take, replace=False)] = True
            parts[owner] = np.concatenate([parts[owner], parts[donor][pick]])
            parts[donor] = parts[donor][~pick]
    return [np.sort(p).astype(np.int64) for p in parts]


def label_counts(
    labels: np.ndarray, parts: list[np.ndarray], classes: int | None = None
) -> NDArray[np.int64]:
    """The owners x classes matrix of label counts, for reporting how skewed a split is
    (``classes``: the dataset's; by default the largest label + 1)."""
    labels = np.asarray(labels)
    if classes is None:
        classes = int(labels.max()) + 1 if labels.size else 1
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ShapeError(f"labels must lie in 0..{classes - 1}")
    counts = np.zeros((len(parts), classes), dtype=np.int64)
    for owner, part in enumerate(parts):
        counts[owner] = np.bincount(labels[part].astype(np.int64), minlength=classes)
    return counts
