"""The label-only baseline, and how far an attack goes beyond it.

An adversary who knows each private image's true label and has the training distribution can
already "reconstruct" it: the class-mean image of the owner's training data (the pixel-space
guess that minimises expected squared error given only the label, so an upper bound on such an
adversary's MSE-guess). A useful model leaks the class through its outputs anyway; what the
owner wants to keep is the instance. So every attack is scored against this baseline on every
metric, and its *excess* (SSIM gain, re-identification gain) is what it revealed beyond the
label.

Shape-agnostic: images are (N, ...) (flat (N, 784) or (N, C, H, W)); the baseline has the
training images' per-example shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from attack import metrics
from attack.reident import Embed, best_top, reidentify
from protocol.errors import DataUnavailableError, ShapeError

#: ``classify(images, labels) -> accuracy``: e.g. ``lambda x, y: validator.accuracy(judge, x, y)``.
Classify = Callable[[Any, Any], float]


def class_means(train_x: Any, train_y: Any) -> dict[int, np.ndarray]:
    """Per label, the mean training image (float32, the per-example shape of ``train_x``)."""
    x = np.asarray(train_x, dtype=np.float64)
    y = np.asarray(train_y)
    if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
        raise ShapeError(f"training images (N, ...) and N labels needed, got {x.shape}, "
                         f"{y.shape}")
    return {int(c): x[y == c].mean(axis=0).astype(np.float32) for c in np.unique(y)}


def label_only_parts(labels: Any, train_x: Any, train_y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The label-only guess as (class means (K, ...), index (N,)): guess i is
    ``means[index[i]]``, so a judge can read each of the K distinct images once."""
    means = class_means(train_x, train_y)
    labels = np.asarray(labels)
    missing = sorted({int(c) for c in np.unique(labels)} - means.keys())
    if missing:
        raise DataUnavailableError(f"label-only baseline: no training images of class(es) "
                                   f"{missing}, so no class mean to guess with")
    classes = np.array(sorted(means))
    return np.stack([means[int(c)] for c in classes]), np.searchsorted(classes, labels)


def label_only(labels: Any, train_x: Any, train_y: Any) -> np.ndarray:
    """The label-only reconstruction: for each label, its class's mean training image."""
    distinct, index = label_only_parts(labels, train_x, train_y)
    return distinct[index]


def score_all(recon: Any, originals: Any, labels: Any, *, classify: Classify,
              embed: Embed | None = None) -> dict[str, Any]:
    """Every metric: mse, psnr, ssim, validator_accuracy, and the ``reid`` block."""
    return {"mse": metrics.mse(recon, originals), "psnr": metrics.psnr(recon, originals),
            "ssim": metrics.ssim(recon, originals),
            "validator_accuracy": float(classify(recon, labels)),
            "reid": reidentify(recon, originals, embed=embed)}


def label_only_scores(originals: Any, labels: Any, train_x: Any, train_y: Any, *,
                      classify: Classify, embed: Embed | None = None) -> dict[str, Any]:
    """The label-only baseline scored with every metric (the ``label_only`` block)."""
    guess = label_only(labels, train_x, train_y).reshape(np.shape(originals))
    return score_all(guess, originals, labels, classify=classify, embed=embed)


def _gain(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return None if a.get(key) is None or b.get(key) is None else float(a[key] - b[key])


def excess(attack_scores: dict[str, Any], baseline_scores: dict[str, Any]) -> dict[str, Any]:
    """What the attack revealed beyond the label: attack minus label-only baseline, per metric.

    Positive is more leakage for every key (``mse_drop`` is baseline minus attack MSE).
    ``reid_top1_gain``/``reid_top5_gain`` compare each side's better space (pixel or feature:
    the adversary uses whichever links more); the per-space gains are given too. Rates are
    fractions: 0.05 is 5 points.
    """
    a, b = attack_scores, baseline_scores
    ra, rb = a["reid"], b["reid"]
    out: dict[str, Any] = {
        "ssim_gain": float(a["ssim"] - b["ssim"]), "psnr_gain": float(a["psnr"] - b["psnr"]),
        "mse_drop": float(b["mse"] - a["mse"]),
        "validator_gain": float(a["validator_accuracy"] - b["validator_accuracy"]),
        "reid_top1_gain": best_top(ra, 1) - best_top(rb, 1),
        "reid_top5_gain": best_top(ra, 5) - best_top(rb, 5),
    }
    for space in ("pixel", "feature"):
        for k in (1, 5):
            out[f"{space}_top{k}_gain"] = _gain(ra, rb, f"{space}_top{k}")
    return out


def instance_report(recon: Any, originals: Any, labels: Any, train_x: Any, train_y: Any, *,
                    classify: Classify, embed: Embed | None = None,
                    label_only: dict[str, Any] | None = None) -> dict[str, Any]:
    """The lab's one call per run: ``{"reid", "label_only", "excess"}`` for ``RunResult``.

    ``label_only`` is this run's :func:`label_only_scores`, if already computed (it is the
    same for every rung of a run); otherwise it is computed here.
    """
    base = label_only if label_only is not None else label_only_scores(
        originals, labels, train_x, train_y, classify=classify, embed=embed)
    return instance_block(score_all(recon, originals, labels, classify=classify, embed=embed),
                          base)


def instance_block(scores: dict[str, Any], label_only: dict[str, Any]) -> dict[str, Any]:
    """``{"reid", "label_only", "excess"}`` from an attack's :func:`score_all` dict and the
    label-only baseline's."""
    return {"reid": scores["reid"], "label_only": label_only,
            "excess": excess(scores, label_only)}
