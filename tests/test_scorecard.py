"""One scoring pass gives the numbers each separate scoring call gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attack import metrics, validator
from attack.baselines import score_all
from attack.scorecard import ScoreCard
from protocol.errors import ShapeError


@pytest.fixture(scope="module")
def judged():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 60)
    recon = np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1).astype(np.float32)
    return recon, x, y, validator.build_validator((1, 28, 28), 10).eval()


def test_a_card_gives_every_metric_of_the_separate_calls(judged):
    recon, x, y, judge = judged
    card = ScoreCard.of(recon, x, y, judge)
    whole = card.metrics()
    assert whole.ssim == metrics.ssim(recon, x)
    assert whole.psnr == pytest.approx(metrics.psnr(recon, x), abs=1e-12)
    assert whole.mse == pytest.approx(metrics.mse(recon, x), rel=1e-12)
    assert whole.validator_accuracy == validator.accuracy(judge, recon, y)
    # A slice (one owner's images) scores as those images alone.
    part = card.metrics(slice(20, 45))
    assert part.ssim == metrics.ssim(recon[20:45], x[20:45])
    assert part.validator_accuracy == validator.accuracy(judge, recon[20:45], y[20:45])
    assert part.ssim != whole.ssim


def test_a_card_reidentifies_as_score_all_with_the_judges_features(judged):
    recon, x, y, judge = judged
    card = ScoreCard.of(recon, x, y, judge)
    want = score_all(recon, x, y, classify=lambda a, b: validator.accuracy(judge, a, b),
                     embed=lambda a: validator.embed(judge, a))
    got = card.scores(recon, x, validator.read(judge, x).features)
    assert got["reid"] == want["reid"] and got["ssim"] == want["ssim"]
    assert np.array_equal(card.features, validator.embed(judge, recon))


def test_one_read_gives_the_labels_and_features_of_two_passes(judged):
    recon, _, y, judge = judged
    reading = validator.read(judge, recon)
    with torch.no_grad():
        labels = judge(torch.from_numpy(recon)).argmax(1).numpy()
    assert np.array_equal(reading.labels, labels)
    assert np.array_equal(reading.features, validator.embed(judge, recon))


def test_labels_must_match_the_reconstructions(judged):
    recon, x, y, judge = judged
    with pytest.raises(ShapeError, match="labels"):
        ScoreCard.of(recon, x, y[:-1], judge)


def test_a_guess_of_few_images_reads_as_the_whole_guess(judged):
    recon, _, y, judge = judged
    distinct = recon[:4]
    index = np.arange(len(y)) % 4
    whole, once = validator.read(judge, distinct[index]), validator.read_distinct(judge,
                                                                                  distinct, index)
    assert np.array_equal(once.labels, whole.labels)
    assert np.allclose(once.features, whole.features, rtol=0, atol=1e-5)
    assert not np.allclose(once.features[0], once.features[1])  # distinct images stay apart
