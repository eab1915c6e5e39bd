"""Whole-run privacy accounting (issue 15): composition rules against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defences.accounting import (
    ALPHAS,
    MEANINGFUL_EPSILON,
    example_releases,
    gaussian_rdp,
    gaussian_tight,
    laplace_advanced,
    meaningful,
    run_epsilon,
    verdict,
)
from defences.noise import CutLayerNoise
from protocol.errors import ConfigError


def test_laplace_composes_k_times_the_per_query_epsilon():
    noise = CutLayerNoise("laplace", scale=64.0, clip=8.0)  # per query 16 / 64 = 0.25
    assert noise.epsilon() == (0.25, 0.0)
    run = run_epsilon(noise, epochs=10)
    assert run["releases"] == 10 and run["epsilon"] == pytest.approx(2.5) and run["delta"] == 0
    assert run["meaningful"] and "meaningful DP" in run["verdict"]
    # advanced composition by hand: sqrt(2 * 10 * ln 1e5) * 0.25 + 10 * 0.25 * (e^0.25 - 1)
    hand = math.sqrt(20 * math.log(1e5)) * 0.25 + 2.5 * (math.exp(0.25) - 1)
    assert run["advanced"]["epsilon"] == pytest.approx(hand)
    assert laplace_advanced(0.01, 10_000, 1e-5)[0] < 10_000 * 0.01  # where it beats basic


def test_gaussian_matches_opacus_and_a_hand_computed_rdp_bound():
    from opacus.accountants import RDPAccountant

    sigma, sens, k, delta = 256.0, 128.0, 7, 1e-5  # noise multiplier 2
    eps, d = gaussian_rdp(sigma, sens, k, delta)
    own = RDPAccountant()
    for _ in range(k):
        own.step(noise_multiplier=2.0, sample_rate=1.0)
    assert eps == pytest.approx(own.get_epsilon(delta, alphas=ALPHAS)) and d == delta
    assert eps <= own.get_epsilon(delta) + 1e-12  # the wider grid is never looser
    # by hand: Gaussian RDP k a / (2 z^2), Balle et al. 2020's conversion, minimised over a
    a = np.array(ALPHAS)
    hand = (k * a / 8 + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)).min()
    assert eps == pytest.approx(hand)
    # the exact (Gaussian DP) composition is below the RDP bound, and not far below
    tight = gaussian_tight(sigma, sens, k, delta)[0]
    assert tight < eps < 1.3 * tight


@pytest.mark.parametrize("mechanism,scale", [("laplace", 64.0), ("gaussian", 256.0)])
def test_whole_run_epsilon_grows_with_epochs(mechanism, scale):
    noise = CutLayerNoise(mechanism, scale=scale, clip=8.0)
    eps = [run_epsilon(noise, epochs=e)["epsilon"] for e in (1, 2, 5, 20)]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    # one epoch is one release: no smaller than the per-query figure
    assert eps[0] >= noise.epsilon()[0] - 1e-9


def test_release_rule():
    assert example_releases(10) == 10
    assert example_releases(10, inference_passes=1, oracle_answers=3) == 14
    assert example_releases(10, training=False, inference_passes=1) == 1
    # the worst-off example decides: a test example's one release when there is no training
    noise = CutLayerNoise("laplace", scale=64.0, clip=8.0)
    assert run_epsilon(noise, epochs=0)["releases"] == 1
    assert run_epsilon(noise, epochs=3, oracle_answers=2)["releases"] == 5
    assert run_epsilon(None, epochs=10) is None
    with pytest.raises(ConfigError):
        example_releases(-1)


def test_no_meaningful_dp_is_said_plainly():
    assert meaningful(MEANINGFUL_EPSILON, 0.0) and not meaningful(10.01, 0.0)
    assert not meaningful(1.0, 1e-3, n_examples=4000)  # delta above 1/n
    assert not meaningful(float("nan"), 0.0)
    assert "no meaningful DP" in verdict(2560.0, 0.0)
    # the sweep's default noise (Laplace scale 0.5, clip 64) is far from meaningful
    run = run_epsilon(CutLayerNoise("laplace", scale=0.5, clip=64.0), epochs=10)
    assert run["epsilon"] == pytest.approx(2560.0) and not run["meaningful"]
