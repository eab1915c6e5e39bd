"""Re-identification: does a reconstruction point back to *its* private image?

SSIM and validator accuracy say how much a reconstruction looks like a digit of the right class;
re-identification says whether it singles out the one image it came from. For every
reconstruction the N private test images are ranked by similarity to it; the top-k rate is the
share of reconstructions whose own original is among the k most similar. Chance is k/N: a
guess that carries no information about the instance (only, say, its class) cannot beat
(number of distinct guesses) / N at top-1.

Two spaces, both over flattened examples so any image shape works, (N, 784) or (N, C, H, W):

* **pixels, negative Euclidean distance.** It is the distance the reconstruction is already
  scored with (MSE and PSNR rank candidates exactly as Euclidean distance does), so "pixel
  top-1" asks: is the MSE-nearest private image the true one? Cosine would forgive a wrong
  overall intensity, which for images in [0, 1] is part of what was or was not recovered.
* **features, cosine similarity** of a caller's ``embed(images) -> (N, d)`` (the validator's
  penultimate layer). A feature vector's length mostly tracks the classifier's confidence, its
  direction what it saw; cosine compares the direction, as face re-identification does.

Ties count against the reconstruction: a candidate exactly as similar as the true image is
ranked ahead of it, so a constant guess (every candidate tied) re-identifies nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from protocol.errors import ShapeError

METRICS = ("euclidean", "cosine")
#: Rows of the similarity matrix computed at once: bounds memory for a 10k test set.
_BLOCK = 1024

Embed = Callable[[Any], Any]


def flatten(x: Any, what: str = "images") -> np.ndarray:
    """(N, ...) array or CPU tensor -> float64 (N, D), checked finite."""
    if hasattr(x, "detach"):  # a torch tensor: numpy without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 2 or a.shape[0] == 0 or a[0].size == 0:
        raise ShapeError(f"{what} must be (N, ...) with N >= 1 and examples non-empty, "
                         f"got {a.shape}")
    a = a.reshape(len(a), -1)
    if not np.all(np.isfinite(a)):
        raise ShapeError(f"{what} contain NaN/inf")
    return a


def similarity(queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """(Q, D) x (M, D) -> (Q, M); larger is more similar."""
    if metric == "euclidean":
        # ||q - c||^2 = ||q||^2 - 2 q.c + ||c||^2; the ||q||^2 term is constant per row and
        # does not change a row's ranking, but is kept so the values are true distances.
        sq = (np.einsum("ij,ij->i", queries, queries)[:, None] - 2.0 * queries @ candidates.T
              + np.einsum("ij,ij->i", candidates, candidates)[None, :])
        return -np.sqrt(np.maximum(sq, 0.0))
    if metric == "cosine":
        # A zero vector has no direction: its similarity to everything is 0 (a full tie).
        qn = np.linalg.norm(queries, axis=1, keepdims=True)
        cn = np.linalg.norm(candidates, axis=1, keepdims=True)
        q = np.divide(queries, qn, out=np.zeros_like(queries), where=qn > 0)
        c = np.divide(candidates, cn, out=np.zeros_like(candidates), where=cn > 0)
        return q @ c.T
    raise ShapeError(f"similarity metric must be one of {', '.join(METRICS)}, got {metric!r}")


def true_ranks(recon: Any, originals: Any, metric: str = "euclidean") -> np.ndarray:
    """For each reconstruction i, the rank (0 = most similar) of original i among all N.

    Rank = candidates strictly more similar + other candidates exactly as similar (ties
    against the reconstruction). Vectorised in blocks of rows: N = 500 is one 500 x 500 matrix.
    """
    r, o = flatten(recon, "reconstructions"), flatten(originals, "originals")
    if r.shape != o.shape:
        raise ShapeError(f"reconstructions {r.shape} and originals {o.shape} must match "
                         "(one reconstruction per original, flattened)")
    ranks = np.empty(len(r), dtype=np.int64)
    for start in range(0, len(r), _BLOCK):
        sim = similarity(r[start:start + _BLOCK], o, metric)
        rows = np.arange(len(sim))
        own = sim[rows, start + rows][:, None]
        ranks[start:start + len(sim)] = (sim >= own).sum(axis=1) - 1  # minus the true one
    return ranks


def rates(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k re-identification rate for each k: share of ranks below k."""
    return {k: float(np.mean(ranks < k)) for k in ks}


def chance(n: int, k: int) -> float:
    """Top-k rate of a guess unrelated to its target, among n candidates."""
    return min(k, n) / n


def reidentify(recon: Any, originals: Any, *, embed: Embed | None = None,
               features: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """The ``reid`` block of a run: pixel and feature top-1/top-5 rates, chance, N.

    ``embed`` maps images (the same array type and shape as ``recon``) to (N, d) features;
    ``features`` is (recon's, originals') features already computed (a scorecard has them);
    with neither the feature rates are ``None``.
    """
    pixel = rates(true_ranks(recon, originals, "euclidean"))
    n = len(flatten(originals, "originals"))
    out: dict[str, Any] = {"pixel_top1": pixel[1], "pixel_top5": pixel[5],
                           "feature_top1": None, "feature_top5": None,
                           "chance_top1": chance(n, 1), "chance_top5": chance(n, 5), "n": n}
    if features is None and embed is not None:
        features = (embed(recon), embed(originals))
    if features is not None:
        fr, fo = (flatten(features[0], "embedded reconstructions"),
                  flatten(features[1], "embedded originals"))
        if len(fr) != n or fr.shape != fo.shape:
            raise ShapeError(f"embed must return (N, d) for N = {n} images each, got "
                             f"{fr.shape} and {fo.shape}")
        feature = rates(true_ranks(fr, fo, "cosine"))
        out["feature_top1"], out["feature_top5"] = feature[1], feature[5]
    return out


def best_top(reid: dict[str, Any], k: int) -> float:
    """The adversary's better space at top-k: max of the pixel and (if any) feature rate."""
    vals = [reid[f"{space}_top{k}"] for space in ("pixel", "feature")]
    return max(v for v in vals if v is not None)
