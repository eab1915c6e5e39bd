"""Re-identification and the label-only baseline (issue 15), on real mnist-small digits."""

from __future__ import annotations

import numpy as np
import pytest

from attack.baselines import excess, instance_report, label_only, label_only_scores
from attack.reident import reidentify, true_ranks
from protocol.errors import DataUnavailableError, ShapeError


@pytest.fixture(scope="module")
def digits():
    from actors.data import load_target

    data = load_target(seed=0)
    return data.test.x, data.test.y, data.train.x, data.train.y


def _embed(x):
    """A stand-in feature space: 4x4 average pooling of the 28x28 image (16 features)."""
    return np.asarray(x).reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), -1)


def _classify_by_mean(train_x, train_y):
    means = np.stack([train_x[train_y == c].mean(0) for c in range(10)]).reshape(10, -1)

    def classify(x, y):
        d = ((np.asarray(x).reshape(len(x), 1, -1) - means[None]) ** 2).sum(-1)
        return float((d.argmin(1) == y).mean())
    return classify


def test_originals_reidentify_themselves(digits):
    x, *_ = digits
    reid = reidentify(x, x, embed=_embed)
    assert reid["pixel_top1"] == 1.0 and reid["pixel_top5"] == 1.0
    assert reid["feature_top1"] == 1.0
    assert reid["n"] == 500 and reid["chance_top1"] == pytest.approx(1 / 500)
    assert reid["chance_top5"] == pytest.approx(5 / 500)


def test_image_shape_does_not_matter(digits):
    x, *_ = digits
    rng = np.random.default_rng(0)
    # half one's own image, half another's, plus noise: about half point back to their own
    mixed = 0.5 * (x + x[rng.permutation(len(x))]) + rng.normal(0, 0.05, x.shape)
    flat = true_ranks(mixed, x)
    assert np.array_equal(true_ranks(mixed.reshape(-1, 1, 28, 28), x.reshape(-1, 1, 28, 28)),
                          flat)
    assert 0.3 < np.mean(flat == 0) < 0.7


def test_label_only_reidentifies_at_most_one_image_per_class(digits):
    x, y, tx, ty = digits
    guess = label_only(y, tx, ty)
    assert guess.shape == x.shape
    reid = reidentify(guess, x, embed=_embed)
    # one guess per class: its nearest image is one per class, so top-k <= 10 k / N
    assert reid["pixel_top1"] <= 10 / 500 and reid["pixel_top5"] <= 50 / 500
    assert reid["feature_top1"] <= 10 / 500


def test_shuffled_reconstructions_score_about_chance(digits):
    x, *_ = digits
    rng = np.random.default_rng(1)
    top5 = [reidentify(x[rng.permutation(len(x))], x)["pixel_top5"] for _ in range(20)]
    # E[top-5] is exactly 5/N for a uniformly random pairing; 20 draws: std about 0.001
    assert abs(np.mean(top5) - 5 / 500) < 0.005


def test_ties_count_against_the_reconstruction(digits):
    x, *_ = digits
    constant = np.full_like(x, 0.5)
    reid = reidentify(constant, x, embed=lambda im: np.zeros((len(im), 3)))
    assert reid["feature_top1"] == 0.0 and reid["feature_top5"] == 0.0


def test_excess_is_zero_for_the_baseline_and_positive_for_the_originals(digits):
    x, y, tx, ty = digits
    classify = _classify_by_mean(tx, ty)
    base = label_only_scores(x, y, tx, ty, classify=classify, embed=_embed)
    assert all(v == 0 for v in excess(base, base).values() if v is not None)
    report = instance_report(x, x, y, tx, ty, classify=classify, embed=_embed)
    assert set(report) == {"reid", "label_only", "excess"}
    gain = report["excess"]
    assert gain["reid_top1_gain"] > 0.97 and gain["ssim_gain"] > 0.5
    assert gain["mse_drop"] > 0 and gain["pixel_top5_gain"] > 0.9
    # the class mean already names the class as well as the originals do, for this classifier
    assert abs(gain["validator_gain"]) < 0.3
    assert report["label_only"] == base


def test_bad_input_is_refused(digits):
    x, y, tx, ty = digits
    with pytest.raises(ShapeError):
        true_ranks(x[:10], x[:11])
    with pytest.raises(ShapeError):
        reidentify(np.full((3, 784), np.nan), x[:3])
    with pytest.raises(ShapeError):
        reidentify(x[:5], x[:5], embed=lambda im: np.ones((2, 4)))
    with pytest.raises(DataUnavailableError, match="class"):
        label_only(y, tx[ty != 3], ty[ty != 3])
