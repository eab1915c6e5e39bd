"""Label inference from the gradients a U-shaped split sends back (Li et al., ICLR 2022).

Under ``--topology u-shaped`` the owner returns, for every training batch, the gradient of its
mean loss w.r.t. the middle's output: row i is example i's own gradient. Li et al. show that
it gives the labels away:

* **norm attack** (binary): an example of the rare (positive) class has a larger gradient
  norm; the score is ``||g_i||`` and the leak is the AUC of that score against the labels;
* **direction (cosine) attack** (binary): two examples of the same class have gradients that
  point the same way (cosine > 0), of different classes the opposite way; the attacker knows
  one positive example's label in each batch and scores every other example by the cosine
  with its gradient.

Multi-class (our extension, 10 classes): the norm says how badly an example is fitted, not
which class it is, so the norm attack's one-vs-rest AUC is reported (macro over classes) and
stays near 0.5 on balanced data. The direction attack extends: the attacker knows the labels
of ``known_per_class`` examples of each class among the gradients it holds (default 1, as Li
et al. know one positive), takes each class's mean unit gradient as its centroid, labels every
example by the most similar centroid, then refines the centroids by spherical k-means seeded
with them (so a cluster keeps the class its known examples gave it). The attacker is told
nothing else: no weights, no other label, no class prior beyond the binary attack's one
assumption (Li et al.'s) that the positives are class 1 and their share is known.

``score_label_inference`` is the lab's: it holds the true labels (from the owners' logs) and
scores what the attacks inferred, beside chance (the majority class's share).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Li et al.'s leak: the 95th percentile over batches of |norm-attack AUC - 0.5|.
LEAK_PERCENTILE = 95
KMEANS_ROUNDS = 10


@dataclass(frozen=True)
class HeldBatch:
    """One training batch's returned gradients (B, ...) and, for scoring, its true labels."""

    grads: np.ndarray
    labels: np.ndarray


def _flat(g: np.ndarray) -> np.ndarray:
    # float64: a ciphertext read as floats holds values near 3e38, whose squares overflow f32
    return np.asarray(g, np.float64).reshape(len(g), -1)


def norm_scores(g: np.ndarray) -> np.ndarray:
    """Li et al.'s norm attack: each example's gradient norm."""
    return np.linalg.norm(_flat(g), axis=1)


def unit_rows(g: np.ndarray) -> np.ndarray:
    flat = _flat(g)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1.0)


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    if positive.all() or not positive.any():
        return None
    # Imported here: scikit-learn costs ~1 s to import, and only u-shaped runs score an AUC.
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def binary_attacks(batches: list[HeldBatch]) -> dict[str, Any]:
    """Norm and cosine attacks per batch (Li et al.): AUCs, leak and label accuracies."""
    norm_aucs, cos_aucs, norm_hits, cos_hits, n_scored = [], [], 0, 0, 0
    for b in batches:
        y = b.labels.astype(np.int64)
        pos = y == 1
        norms = norm_scores(b.grads)
        auc = _auc(norms, pos)
        if auc is not None:
            norm_aucs.append(auc)
        # The norm attack's decision: the top share of norms are positives, that share being
        # the positive rate (known to the attacker: Li et al.'s assumption).
        k = int(round(pos.mean() * len(y)))
        guess = np.zeros(len(y), bool)
        guess[np.argsort(-norms, kind="stable")[:k]] = True
        norm_hits += int((guess == pos).sum())
        n_scored += len(y)
        if not pos.any() or len(y) < 2:
            cos_hits += int((~pos).sum())  # no known positive: the attacker guesses negative
            continue
        known = int(np.flatnonzero(pos)[0])  # the one positive the attacker knows
        units = unit_rows(b.grads)
        cos = units @ units[known]
        rest = np.arange(len(y)) != known
        auc = _auc(cos[rest], pos[rest])
        if auc is not None:
            cos_aucs.append(auc)
        cos_hits += int(((cos > 0) == pos).sum())
    leak = (float(np.percentile(np.abs(np.array(norm_aucs) - 0.5), LEAK_PERCENTILE))
            if norm_aucs else None)
    return {"norm_auc": _mean(norm_aucs), "norm_leak_p95": leak,
            "cosine_auc": _mean(cos_aucs),
            "norm_accuracy": norm_hits / max(n_scored, 1),
            "cosine_accuracy": cos_hits / max(n_scored, 1)}


def known_examples(labels: np.ndarray, classes: int, per_class: int) -> np.ndarray:
    """Which held examples the attacker knows the label of: the first ``per_class`` of each
    class (a deterministic choice; the attacker is told these labels and no others)."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in range(classes)]
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, np.int64)


def cosine_classify(units: np.ndarray, known: np.ndarray, known_labels: np.ndarray,
                    classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-class direction attack: class centroids from the known examples, refined by
    spherical k-means seeded with them. Returns (predicted labels, per-class cosine scores)."""
    centroids = np.zeros((classes, units.shape[1]))
    for c in range(classes):
        mine = known[known_labels == c]
        if len(mine):
            centroids[c] = units[mine].mean(0)
    have = np.linalg.norm(centroids, axis=1) > 0
    for _ in range(KMEANS_ROUNDS):
        scores = units @ (centroids / np.maximum(np.linalg.norm(centroids, axis=1,
                                                                keepdims=True), 1e-12)).T
        scores[:, ~have] = -np.inf  # a class with no known example has no centroid
        assign = scores.argmax(1)
        assign[known] = known_labels  # the known labels stay as the attacker was told
        for c in np.flatnonzero(have):
            members = units[assign == c]
            if len(members):
                centroids[c] = members.mean(0)
    scores = units @ (centroids / np.maximum(np.linalg.norm(centroids, axis=1,
                                                            keepdims=True), 1e-12)).T
    scores[:, ~have] = -np.inf
    return scores.argmax(1), scores


def multiclass_attacks(batches: list[HeldBatch], classes: int,
                       known_per_class: int) -> dict[str, Any]:
    """Norm attack one-vs-rest (macro AUC per batch) and the multi-class direction attack."""
    norm_aucs = []
    for b in batches:
        norms = norm_scores(b.grads)
        per_class = [_auc(norms, b.labels == c) for c in range(classes)]
        got = [a for a in per_class if a is not None]
        if got:
            norm_aucs.append(float(np.mean(got)))
    grads = np.concatenate([unit_rows(b.grads) for b in batches])
    labels = np.concatenate([b.labels for b in batches]).astype(np.int64)
    known = known_examples(labels, classes, known_per_class)
    guess, scores = cosine_classify(grads, known, labels[known], classes)
    scored = np.ones(len(labels), bool)
    scored[known] = False  # the attacker was told these: not scored
    aucs = [_auc(np.nan_to_num(scores[scored, c], neginf=-2.0), labels[scored] == c)
            for c in range(classes)]
    aucs = [a for a in aucs if a is not None]
    # The norm's best class guess: none (it carries no class); report its one-vs-rest AUC only.
    return {"norm_auc": _mean(norm_aucs), "norm_leak_p95": None,
            "cosine_auc": _mean(aucs),
            "norm_accuracy": None,
            "cosine_accuracy": float((guess[scored] == labels[scored]).mean())
            if scored.any() else None,
            "known_labels": int(len(known))}


def score_label_inference(batches: list[HeldBatch], classes: int, *,
                          known_per_class: int = 1) -> dict[str, Any]:
    """The label-inference report of one adversary: the attacks' scores beside chance."""
    batches = [b for b in batches if len(b.labels)]
    if not batches:
        return {"batches": 0, "examples": 0}
    labels = np.concatenate([b.labels for b in batches]).astype(np.int64)
    chance = float(np.bincount(labels, minlength=classes).max() / len(labels))
    found = (binary_attacks(batches) if classes == 2
             else multiclass_attacks(batches, classes, known_per_class))
    accuracies = [a for a in (found["norm_accuracy"], found["cosine_accuracy"]) if a is not None]
    return {"via": "returned gradients (MIDDLE_GRADIENTS)", "batches": len(batches),
            "examples": int(len(labels)), "classes": classes, **found,
            "label_accuracy": max(accuracies) if accuracies else None, "chance": chance,
            "attack": "Li et al. 2022 norm + direction" + (
                "" if classes == 2 else f" (multi-class: {known_per_class} known label(s) per "
                "class, seeded spherical k-means)")}


def align(grads: list[np.ndarray], labels: list[np.ndarray]) -> list[HeldBatch]:
    """Pair an adversary's held gradients with the owner's logged labels, newest last: both
    are the last batches sent, in sending order. A pair whose row counts differ (a frame the
    adversary missed) is dropped."""
    n = min(len(grads), len(labels))
    pairs = zip(grads[len(grads) - n:], labels[len(labels) - n:], strict=True)
    return [HeldBatch(g, y) for g, y in pairs if len(g) == len(y)]


def vanilla_labels(adversary: str, protocol: str, classes: int,
                   chance: float) -> dict[str, Any]:
    """Under a vanilla split the owner sends its labels: what each adversary gets of them."""
    if protocol.startswith("secret-shared"):
        return {"via": "none: the owner computes the loss on revealed logits", "chance": chance,
                "label_accuracy": None, "note": "not measured (colluding servers could pool "
                "the GRAD_SHARE shares of p - onehot(y))" if adversary == "colluding-servers"
                else "shares of the logits' gradient only"}
    if adversary == "eavesdropper" and protocol != "plaintext":
        return {"via": "LABELS frames, encrypted", "label_accuracy": None, "chance": chance,
                "note": "ciphertext: nothing beyond chance"}
    return {"via": "LABELS frames", "label_accuracy": 1.0, "chance": chance,
            "note": "vanilla split learning sends every training label to the server"
            + (" in the clear (an eavesdropper's full capture, --snaplen 0, keeps them all)"
               if adversary == "eavesdropper" else "")}
