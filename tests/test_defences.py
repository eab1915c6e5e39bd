"""Defences: privacy accounting, clipping and noise, NoPeek, dropout, query budgets, the flag,
cuts of any shape, per-owner streams and the plug-in interface."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from defences import (
    DEFENCES,
    PARAMETERS,
    CutLayerDropout,
    CutLayerNoise,
    DefenceSpec,
    NoPeek,
    OwnerDefence,
    Param,
    QueryBudget,
    QueryBudgetExceeded,
    QueryGate,
    analytic_gaussian_epsilon,
    build_defences,
    classic_gaussian_epsilon,
    clip_rows,
    defence_generator,
    distance_correlation,
    parse_defence,
    register_defence,
    unregister_defence,
)
from protocol.errors import ConfigError, ShapeError, SplitWireError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Every tensor here is small: intra-op threads only add contention (seconds on a busy
    # 2-core runner), so run single-threaded and restore the setting for other modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- epsilon


def brute_force_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Hockey-stick divergence sup over neighbours, integrated numerically on a fine grid.

    Independent of the closed form: integrate max(0, p0(x) - e^eps p1(x)) for the 1-D
    Gaussians N(0, s^2) and N(D, s^2) (the worst pair of neighbours differ by D along a line).
    """
    x = np.linspace(-40 * sigma, sensitivity + 40 * sigma, 2_000_001)
    p0 = stats.norm.pdf(x, 0.0, sigma)
    p1 = stats.norm.pdf(x, sensitivity, sigma)
    return float(np.trapezoid(np.maximum(0.0, p0 - math.exp(epsilon) * p1), x))


def test_laplace_epsilon_known_setting() -> None:
    noise = CutLayerNoise("laplace", scale=0.5, clip=5)
    assert noise.epsilon() == (20.0, 0.0)
    assert CutLayerNoise("laplace", scale=2.0, clip=1).epsilon() == (1.0, 0.0)


@pytest.mark.parametrize("sigma", [10.0, 20.0, 40.0])
def test_analytic_gaussian_beats_classic_where_classic_is_valid(sigma: float) -> None:
    classic = classic_gaussian_epsilon(sigma, 2.0, 1e-5)
    assert classic < 1.0  # the classic bound's own range of validity
    analytic = CutLayerNoise("gaussian", scale=sigma, clip=1.0, delta=1e-5).epsilon()
    assert analytic[1] == 1e-5
    assert 0.0 < analytic[0] < classic


def test_analytic_gaussian_known_value() -> None:
    # Balle & Wang 2018: sigma ~= 3.73 calibrates (1, 1e-5) at sensitivity 1 (classic: 4.84).
    assert analytic_gaussian_epsilon(3.73, 1.0, 1e-5) == pytest.approx(1.0, abs=2e-3)
    # Same mechanism, rescaled: epsilon depends on sigma / sensitivity only.
    assert analytic_gaussian_epsilon(7.46, 2.0, 1e-5) == pytest.approx(
        analytic_gaussian_epsilon(3.73, 1.0, 1e-5), rel=1e-9
    )


@pytest.mark.parametrize(("sigma", "sensitivity"), [(5.0, 2.0), (1.0, 2.0), (0.5, 10.0)])
def test_analytic_gaussian_is_tight_by_brute_force(sigma: float, sensitivity: float) -> None:
    delta = 1e-5
    eps = analytic_gaussian_epsilon(sigma, sensitivity, delta)
    # At eps the privacy-loss condition holds (to integration error) ...
    assert brute_force_delta(eps, sigma, sensitivity) == pytest.approx(delta, rel=1e-3)
    # ... and 1% less epsilon breaks it: the value is the smallest, not just an upper bound.
    assert brute_force_delta(0.99 * eps, sigma, sensitivity) > 1.05 * delta


def test_classic_bound_is_not_a_guarantee_beyond_epsilon_one() -> None:
    # Why epsilon() reports the analytic value: for small sigma the classic formula claims
    # less privacy loss than the mechanism actually has.
    assert classic_gaussian_epsilon(0.5, 2.0, 1e-5) < analytic_gaussian_epsilon(0.5, 2.0, 1e-5)


def test_no_noise_needed_when_delta_covers_everything() -> None:
    # delta(0) = 2 Phi(D / 2s) - 1, so a huge sigma makes epsilon exactly 0.
    assert analytic_gaussian_epsilon(1e9, 2.0, 1e-5) == 0.0


# ---------------------------------------------------------------------------- noise


@pytest.mark.parametrize("cut_shape", [(500,), (8, 12, 12)])
@pytest.mark.parametrize(("mechanism", "order"), [("laplace", 1), ("gaussian", 2)])
def test_clipping_bounds_each_examples_norm(
    mechanism: str, order: int, cut_shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    scales = torch.logspace(-3, 2, 64).view(-1, *([1] * len(cut_shape)))
    h = torch.randn(64, *cut_shape) * scales
    # A scale too small to matter shows the clipped examples themselves.
    noise = CutLayerNoise(mechanism, scale=1e-12, clip=5.0)
    out = noise(h)
    assert out.shape == h.shape
    # The norm is over all of an example's elements (for a conv cut: channels x H x W).
    norms = torch.linalg.vector_norm(out.flatten(1), ord=order, dim=1)
    assert float(norms.max()) <= 5.0 * (1 + 1e-5)
    small = torch.linalg.vector_norm(h.flatten(1), ord=order, dim=1) < 5.0
    assert small.any() and (~small).any()
    torch.testing.assert_close(out[small], h[small])  # examples inside the ball: left alone
    torch.testing.assert_close(norms[~small], torch.full_like(norms[~small], 5.0))


@pytest.mark.parametrize(
    ("mechanism", "scale", "variance"),
    [("laplace", 0.5, 2 * 0.5**2), ("gaussian", 1.5, 1.5**2)],
)
def test_noise_statistics_match_scale(mechanism: str, scale: float, variance: float) -> None:
    noise = CutLayerNoise(mechanism, scale=scale, clip=1.0, seed=3)
    added = noise(torch.zeros(400, 500))
    assert float(added.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(added.var()) == pytest.approx(variance, rel=0.02)
    if mechanism == "laplace":  # mean |X| = b tells Laplace apart from a Gaussian of equal var
        assert float(added.abs().mean()) == pytest.approx(scale, rel=0.02)


def test_noise_is_seeded_and_on_in_eval() -> None:
    h = torch.ones(4, 500)
    a = CutLayerNoise("gaussian", scale=1.0, clip=10.0, seed=1).eval()
    b = CutLayerNoise("gaussian", scale=1.0, clip=10.0, seed=1)
    out = a(h)
    torch.testing.assert_close(out, b(h))
    assert not torch.equal(out, a(h))  # fresh noise on every call
    clipped = torch.full_like(h, 10.0 / math.sqrt(500))  # the ones row, clipped to L2 norm 10
    assert float((out - clipped).std()) == pytest.approx(1.0, rel=0.1)


def test_noise_passes_gradients_through_the_clip() -> None:
    h = (torch.randn(8, 500) * 3).requires_grad_()
    out = CutLayerNoise("laplace", scale=0.5, clip=5.0)(h)
    out.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    assert float(h.grad.abs().sum()) > 0
    # An all-zero row (a dead ReLU layer) must not produce NaN gradients.
    z = torch.zeros(2, 500, requires_grad=True)
    CutLayerNoise("gaussian", scale=1.0, clip=1.0)(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_noise_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="--defence noise: mechanism"):
        CutLayerNoise("uniform", scale=1.0, clip=1.0)
    with pytest.raises(ConfigError, match="scale"):
        CutLayerNoise("laplace", scale=float("nan"), clip=1.0)
    with pytest.raises(ConfigError, match="clip"):
        CutLayerNoise("laplace", scale=1.0, clip=0.0)
    with pytest.raises(ConfigError, match="delta"):
        CutLayerNoise("gaussian", scale=1.0, clip=1.0, delta=1.0)
    with pytest.raises(ShapeError):
        CutLayerNoise("laplace", scale=1.0, clip=1.0)(torch.zeros(500))


def test_noise_pickles_with_its_generator_state() -> None:
    noise = CutLayerNoise("laplace", scale=1.0, clip=1.0, seed=5)
    copy = pickle.loads(pickle.dumps(noise))
    h = torch.zeros(2, 500)
    torch.testing.assert_close(noise(h), copy(h))


# ---------------------------------------------------------------------------- NoPeek


def test_distance_correlation_of_identical_batches_is_one() -> None:
    x = torch.randn(64, 784)
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-5)


def test_distance_correlation_invariant_under_scaled_rigid_motion() -> None:
    torch.manual_seed(1)
    x = torch.randn(48, 20)
    q, _ = torch.linalg.qr(torch.randn(500, 20))  # orthonormal columns: a 20 -> 500 isometry
    z = 3.0 * x @ q.T + torch.randn(500)
    assert float(distance_correlation(x, z)) == pytest.approx(1.0, abs=1e-5)


def test_distance_correlation_of_independent_data_is_small_and_shrinks() -> None:
    gen = torch.Generator().manual_seed(2)

    def mean_dcor(batch: int) -> float:
        return float(
            np.mean(
                [
                    float(
                        distance_correlation(
                            torch.randn(batch, 5, generator=gen),
                            torch.randn(batch, 5, generator=gen),
                        )
                    )
                    for _ in range(3)
                ]
            )
        )

    small, large = mean_dcor(32), mean_dcor(512)
    assert large < 0.25
    assert large < 0.5 * small
    # Dependence that correlation misses (x and x^2 are uncorrelated) still scores higher.
    x = torch.randn(512, 5, generator=gen)
    assert float(distance_correlation(x, x**2)) > 1.5 * large


def test_distance_correlation_is_bounded_and_differentiable() -> None:
    x = torch.randn(32, 784)
    z = torch.relu(x @ torch.randn(784, 500)).requires_grad_()
    d = distance_correlation(x, z)
    assert 0.0 <= float(d.detach()) <= 1.0
    d.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and float(z.grad.abs().sum()) > 0
    # Degenerate batches: identical rows (zero distances everywhere) stay finite and score 0.
    flat = torch.ones(8, 500, requires_grad=True)
    d0 = distance_correlation(torch.randn(8, 784), flat)
    d0.backward()
    assert float(d0.detach()) == pytest.approx(0.0, abs=1e-5)
    assert flat.grad is not None and torch.isfinite(flat.grad).all()
    with pytest.raises(ShapeError):
        distance_correlation(torch.randn(4, 3), torch.randn(5, 3))


def test_nopeek_loss_scales_with_weight_and_lowers_dcor_when_trained() -> None:
    torch.manual_seed(4)
    x = torch.randn(64, 10)
    layer = torch.nn.Linear(10, 10)
    nopeek = NoPeek(weight=0.5)
    with torch.no_grad():
        before = float(distance_correlation(x, torch.relu(layer(x))))
        assert float(nopeek.loss(x, torch.relu(layer(x)))) == pytest.approx(0.5 * before, rel=1e-5)
    # Plain gradient steps (torch.optim's first import alone costs seconds).
    for _ in range(30):
        layer.zero_grad()
        nopeek.loss(x, torch.relu(layer(x))).backward()
        with torch.no_grad():
            for p in layer.parameters():
                p -= 0.5 * p.grad
    with torch.no_grad():
        assert float(distance_correlation(x, torch.relu(layer(x)))) < 0.9 * before
    with pytest.raises(ConfigError, match="weight"):
        NoPeek(weight=-0.1)


# ---------------------------------------------------------------------------- dropout


def test_dropout_is_active_in_eval_and_preserves_the_mean() -> None:
    drop = CutLayerDropout(rate=0.3, seed=0).eval()
    assert not drop.training
    h = torch.ones(200, 500)
    out = drop(h)
    zeros = float((out == 0).float().mean())
    assert zeros == pytest.approx(0.3, abs=0.01)
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))
    assert float(out.mean()) == pytest.approx(1.0, abs=0.01)
    assert not torch.equal(out, drop(h))  # a fresh mask every call


def test_dropout_rate_zero_is_identity_and_bad_rates_refused() -> None:
    h = torch.randn(4, 500)
    assert torch.equal(CutLayerDropout(0.0)(h), h)
    for rate in (1.0, -0.1, float("nan"), 2):
        with pytest.raises(ConfigError, match=r"--defence dropout: rate"):
            CutLayerDropout(rate)


# ---------------------------------------------------------------------------- budget


def test_query_budget_limits_each_party_separately() -> None:
    budget = QueryBudget(limit=10)
    assert budget.charge("alice", 4) == 4
    assert budget.charge("alice", 10) == 6  # partly answered
    assert budget.charge("alice", 3) == 0  # over budget
    assert budget.answered("alice") == 10
    assert budget.refused("alice") == 7
    assert budget.remaining("alice") == 0
    assert budget.charge("bob", 10) == 10  # bob has his own budget
    assert budget.answered("carol") == 0


def test_query_budget_refund_restores_one_party_only() -> None:
    budget = QueryBudget(limit=5)
    budget.charge("alice", 9)
    budget.charge("bob", 2)
    budget.refund("alice")
    assert budget.remaining("alice") == 5 and budget.refused("alice") == 4
    assert budget.remaining("bob") == 3


def test_query_budget_require_raises_when_nothing_is_answered() -> None:
    budget = QueryBudget(limit=3)
    assert budget.require("eve", 5) == 3
    with pytest.raises(QueryBudgetExceeded, match="eve") as info:
        budget.require("eve", 1)
    assert isinstance(info.value, SplitWireError)
    assert budget.require("eve", 0) == 0  # asking for nothing is not an overrun
    restored = pickle.loads(pickle.dumps(budget))
    assert restored.answered("eve") == 3 and restored.charge("eve", 1) == 0
    with pytest.raises(ConfigError, match="limit"):
        QueryBudget(limit=-1)
    with pytest.raises(ValueError):
        budget.charge("eve", -1)


# ---------------------------------------------------------------------------- the flag


def test_parse_typical_specs() -> None:
    spec = parse_defence("noise:mechanism=laplace,scale=0.5,clip=5")
    assert spec == DefenceSpec("noise", {"mechanism": "laplace", "scale": 0.5, "clip": 5.0})
    assert parse_defence(" Query-Budget : limit = 100 ").params == {"limit": 100}
    assert isinstance(parse_defence("query-budget:limit=100").params["limit"], int)


@pytest.mark.parametrize(
    "text",
    [
        "noise:mechanism=gaussian,scale=1.5,clip=0.1,delta=1e-06,seed=9",
        "noise:mechanism=laplace,scale=0.5,clip=5",
        "nopeek:weight=0.1",
        "dropout:rate=0.25,seed=3",
        "query-budget:limit=1000",
    ],
)
def test_spec_round_trip(text: str) -> None:
    spec = parse_defence(text)
    assert parse_defence(str(spec)) == spec
    assert str(parse_defence(str(spec))) == str(spec)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="--defence") as info:
        parse_defence("blur:radius=2")
    message = str(info.value)
    assert "blur" in message and "\n" not in message
    assert all(name in message for name in DEFENCES)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("noise:mechanism=laplace,scale=0.5,clip=5,sigma=1", "'sigma'"),  # unknown key
        ("noise:mechanism=laplace,clip=5", "missing key 'scale'"),
        ("noise:mechanism=uniform,scale=1,clip=1", "mechanism"),
        ("noise:mechanism=laplace,scale=abc,clip=1", "scale"),
        ("noise:mechanism=laplace,scale=nan,clip=1", "scale"),
        ("noise:mechanism=laplace,scale=inf,clip=1", "scale"),
        ("noise:mechanism=laplace,scale=-1,clip=1", "scale"),
        ("nopeek:weight=0.1,weight=0.2", "twice"),
        ("nopeek:weight", "key=value"),
        ("nopeek", "missing key 'weight'"),
        ("query-budget:limit=1.5", "limit"),
        ("dropout:rate=0.5,seed=-2", "seed"),
    ],
)
def test_bad_specs_name_the_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_defence(text)
    message = str(info.value)
    assert message.startswith("--defence") and needle in message and "\n" not in message


def test_unknown_key_lists_accepted_keys() -> None:
    with pytest.raises(ConfigError, match="accepted keys: clip, delta, mechanism, scale, seed"):
        parse_defence("noise:mechanism=laplace,scale=1,clip=1,eps=2")


def test_range_errors_surface_at_build_time() -> None:
    with pytest.raises(ConfigError, match="--defence dropout: rate"):
        build_defences([parse_defence("dropout:rate=1")])
    with pytest.raises(ConfigError, match="scale"):
        build_defences([parse_defence("noise:mechanism=laplace,scale=0,clip=1")])


def test_build_combines_and_refuses_duplicates() -> None:
    specs = [
        parse_defence(t)
        for t in (
            "dropout:rate=0.1",
            "noise:mechanism=gaussian,scale=20,clip=1",
            "nopeek:weight=0.5",
            "query-budget:limit=50",
        )
    ]
    defences = build_defences(specs)
    assert isinstance(defences.noise, CutLayerNoise) and defences.noise.mechanism == "gaussian"
    assert isinstance(defences.dropout, CutLayerDropout)
    assert isinstance(defences.nopeek, NoPeek) and defences.nopeek.weight == 0.5
    assert isinstance(defences.budget, QueryBudget) and defences.budget.limit == 50
    eps = defences.epsilon()
    assert eps is not None and eps[0] < 1 and eps[1] == 1e-5
    assert "epsilon" in defences.describe()
    x, h = torch.randn(16, 784), torch.randn(16, 500)
    assert defences.apply(h).shape == h.shape
    assert float(defences.penalty(x, h)) > 0
    with pytest.raises(ConfigError, match="twice"):
        build_defences([parse_defence("nopeek:weight=1"), parse_defence("nopeek:weight=0.2")])
    with pytest.raises(ConfigError, match="accepted keys"):
        build_defences([DefenceSpec("query-budget", {"limt": 3})])


def test_no_defences_is_a_no_op() -> None:
    defences = build_defences([])
    assert not defences and defences.epsilon() is None
    h = torch.randn(4, 500)
    assert torch.equal(defences.apply(h), h)
    assert float(defences.penalty(torch.randn(4, 784), h)) == 0.0
    assert defences.describe() == "no defences"


# ---------------------------------------------------------------------------- any cut shape

CONV_CUT = (8, 12, 12)  # e.g. the cnn at pool1


def test_clip_rows_clips_each_example_over_all_its_elements() -> None:
    torch.manual_seed(5)
    h = torch.randn(6, *CONV_CUT) * torch.tensor([0.01, 0.1, 1, 3, 10, 30]).view(-1, 1, 1, 1)
    for norm in (1, 2):
        out = clip_rows(h, 4.0, norm)
        # The same as clipping the flattened (N, 1152) rows: one norm per example, not per
        # channel or per pixel row.
        torch.testing.assert_close(out, clip_rows(h.flatten(1), 4.0, norm).view_as(h))
        norms = torch.linalg.vector_norm(out.flatten(1), ord=norm, dim=1)
        before = torch.linalg.vector_norm(h.flatten(1), ord=norm, dim=1)
        torch.testing.assert_close(norms, before.clamp(max=4.0))
        # Each example is scaled as a whole: its direction is unchanged.
        ratio = out.flatten(1) / h.flatten(1)
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    # One example's clip does not depend on the others in the batch.
    torch.testing.assert_close(clip_rows(h[3:4], 4.0, 2), clip_rows(h, 4.0, 2)[3:4])
    with pytest.raises(ShapeError):
        clip_rows(torch.ones(5), 1.0, 2)


def test_every_defence_acts_on_a_rank_4_cut() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(32, 1, 28, 28, generator=gen)
    h = torch.relu(torch.randn(32, *CONV_CUT, generator=gen)) * 3
    texts = ("dropout:rate=0.25,seed=1", "noise:mechanism=laplace,scale=0.05,clip=50",
             "nopeek:weight=0.5", "query-budget:limit=40")
    defences = build_defences(parse_defence(t) for t in texts)
    out = defences.apply(h)
    assert out.shape == h.shape and out.dtype == h.dtype
    # Dropout per element, then clipping over the whole example, then noise of the cut's shape.
    dropped = CutLayerDropout(0.25, seed=1)(h)
    assert 0.2 < float((dropped == 0).float().mean() - (h == 0).float().mean()) / float(
        (h != 0).float().mean()) < 0.3
    expected = clip_rows(dropped, 50.0, 1)
    assert float((out - expected).abs().mean()) == pytest.approx(0.05, rel=0.1)  # Laplace mean |X|
    # NoPeek compares flat images (N, 784) with flat activations (N, 1152).
    penalty = defences.penalty(x, h)
    assert float(penalty) == pytest.approx(
        0.5 * float(distance_correlation(x.flatten(1), h.flatten(1))), rel=1e-6)
    assert 0.0 < float(penalty) < 0.5
    # The budget counts examples, whatever an example's shape.
    assert defences.budget is not None and defences.budget.charge("eve", len(x)) == 32
    assert defences.budget.charge("eve", len(x)) == 8


def test_noise_and_dropout_gradients_on_a_conv_cut() -> None:
    h = (torch.randn(4, *CONV_CUT) * 5).requires_grad_()
    out = build_defences([parse_defence("dropout:rate=0.5"),
                          parse_defence("noise:mechanism=gaussian,scale=1,clip=3")]).apply(h)
    out.sum().backward()
    assert h.grad is not None and h.grad.shape == h.shape and torch.isfinite(h.grad).all()
    assert float((h.grad == 0).float().mean()) == pytest.approx(0.5, abs=0.05)  # dropped: no grad


# ---------------------------------------------------------------------------- streams


NOISY = ("noise:mechanism=gaussian,scale=1.0,clip=10,seed=3", "dropout:rate=0.5,seed=3")


def _draws(stream: int | str, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One owner's noise (on zeros, so only the noise shows) and dropout mask."""
    defences = build_defences((parse_defence(t) for t in NOISY), stream=stream)
    assert defences.noise is not None and defences.dropout is not None
    return defences.noise(torch.zeros_like(h)), defences.dropout(torch.ones_like(h)) != 0


def test_two_owners_with_the_same_spec_draw_different_noise_and_masks() -> None:
    h = torch.zeros(16, *CONV_CUT)
    noise_a, mask_a = _draws(0, h)
    for other in (1, "owner:1", "1"):
        noise_b, mask_b = _draws(other, h)
        assert not torch.equal(noise_a, noise_b)
        assert not torch.equal(mask_a, mask_b)
        # Not a shifted or partly shared stream: the two owners' noise is uncorrelated.
        assert abs(float(torch.corrcoef(torch.stack([noise_a.flatten(), noise_b.flatten()]))[0, 1])
                   ) < 0.05
        assert float((mask_a == mask_b).float().mean()) == pytest.approx(0.5, abs=0.05)
    assert not torch.equal(_draws(1, h)[0], _draws("1", h)[0])  # 1 and "1" are two owners


def test_the_same_owner_and_seed_draws_the_same_in_every_build() -> None:
    h = torch.zeros(16, 500)
    for stream in (0, 2, "owner:2"):
        first, second = _draws(stream, h), _draws(stream, h)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # A different seed in the spec is a different stream for the same owner.
    other = build_defences([parse_defence("noise:mechanism=gaussian,scale=1.0,clip=10,seed=4")],
                           stream=2)
    assert not torch.equal(_draws(2, h)[0], other.apply(h))


def test_default_stream_draws_what_the_seed_alone_draws() -> None:
    # Stream 0 (the default) keeps a one-owner run's numbers: the generator is seeded with the
    # spec's seed exactly, as a hand-made CutLayerNoise or CutLayerDropout is.
    h = torch.randn(8, 500)
    noise = build_defences([parse_defence("noise:mechanism=gaussian,scale=0.5,clip=2,seed=7")])
    plain = torch.Generator().manual_seed(7)
    expected = clip_rows(h, 2.0, 2) + (
        torch.randn(h.shape, generator=plain, dtype=torch.float64) * 0.5).float()
    torch.testing.assert_close(noise.apply(h), expected, rtol=0, atol=0)
    drop = build_defences([parse_defence("dropout:rate=0.3")], stream=0)
    keep = torch.rand(h.shape, generator=torch.Generator().manual_seed(0)) >= 0.3
    torch.testing.assert_close(drop.apply(h), h * (keep.float() / 0.7), rtol=0, atol=0)


def test_within_one_owner_noise_and_dropout_streams_differ() -> None:
    # Off the default stream the defence's name is hashed in too: same seed, unrelated draws.
    a = torch.rand(1000, generator=defence_generator(3, 1, "noise"))
    b = torch.rand(1000, generator=defence_generator(3, 1, "dropout"))
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.1


@pytest.mark.parametrize("stream", [-1, True, "", 1.5, None])
def test_bad_streams_are_refused(stream: object) -> None:
    with pytest.raises(ConfigError, match="stream"):
        build_defences([parse_defence("dropout:rate=0.1")], stream=stream)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- plug-ins


class ToyShift(OwnerDefence):
    """A toy defence, registered from this module only: a seeded offset per example."""

    name = "toy-shift"
    params = {"amount": Param("float", required=True), "seed": Param("int")}
    order = 95  # after the noise
    random = True

    def __init__(self, amount: float, seed: int = 0, *, stream: int | str = 0) -> None:
        self.amount = amount
        self.generator = defence_generator(seed, stream, self.name)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        offset = torch.rand(len(h), generator=self.generator) * self.amount
        return h + offset.view(-1, *([1] * (h.dim() - 1)))

    def penalty(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.amount * h.pow(2).mean()

    def epsilon(self) -> tuple[float, float]:
        return (1e6, 0.0)  # a loose claim: the composed epsilon must take the tighter one


class ToyGate(QueryGate):
    """A toy query gate: answers at most ``per_call`` queries each time it is asked."""

    name = "toy-gate"
    params = {"per_call": Param("int", required=True)}

    def __init__(self, per_call: int) -> None:
        self.per_call = per_call

    def charge(self, party: str, n: int) -> int:
        return min(n, self.per_call)


@pytest.fixture
def toys():
    for cls in (ToyShift, ToyGate):
        register_defence(cls)
    yield
    for cls in (ToyShift, ToyGate):
        unregister_defence(cls.name)


def test_a_registered_toy_defence_is_parsed_built_and_applied(toys) -> None:
    spec = parse_defence("toy-shift:amount=2,seed=3")
    assert spec == DefenceSpec("toy-shift", {"amount": 2.0, "seed": 3}) and spec.kind is ToyShift
    assert "seed" in PARAMETERS["toy-shift"] and parse_defence(str(spec)) == spec
    texts = ("toy-shift:amount=2,seed=3", "nopeek:weight=0.5",
             "noise:mechanism=laplace,scale=0.1,clip=5", "toy-gate:per_call=3")
    defences = build_defences((parse_defence(t) for t in texts), stream="owner:1")
    # Transform order: default 50 (nopeek, toy-gate: no transform), noise 90, toy 95.
    assert [m.name for m in defences] == ["nopeek", "toy-gate", "noise", "toy-shift"]
    x, h = torch.rand(8, 1, 28, 28), torch.randn(8, *CONV_CUT)
    # Applied in order, noise then the toy, each with this owner's own stream.
    noise = CutLayerNoise("laplace", scale=0.1, clip=5.0, stream="owner:1")
    toy = ToyShift(2.0, seed=3, stream="owner:1")
    torch.testing.assert_close(defences.apply(h), toy.transform(noise.transform(h)))
    torch.testing.assert_close(
        defences.penalty(x, h), NoPeek(0.5).loss(x, h) + 2.0 * h.pow(2).mean())
    assert defences.epsilon() == noise.epsilon()  # (20, 0) beats the toy's loose claim
    assert "--defence toy-shift:amount=2.0,seed=3" in defences.describe()
    gate = defences.budget
    assert isinstance(gate, ToyGate) and gate.require("eve", 10) == 3
    # A different owner draws a different offset from the same spec.
    other = build_defences([parse_defence("toy-shift:amount=2,seed=3")], stream="owner:2")
    alone = build_defences([parse_defence("toy-shift:amount=2,seed=3")], stream="owner:1")
    assert not torch.equal(other.apply(h), alone.apply(h))


def test_a_spec_carries_its_class_to_where_it_is_not_registered(toys) -> None:
    # A spec pickled to a worker (a Ray actor) builds there even if the worker never ran the
    # registration: the class travels by reference.
    spec = pickle.loads(pickle.dumps(parse_defence("toy-shift:amount=1")))
    unregister_defence("toy-shift")
    assert "toy-shift" not in DEFENCES
    assert spec.kind is ToyShift and isinstance(build_defences([spec]).get("toy-shift"), ToyShift)
    with pytest.raises(ConfigError, match="unknown defence 'toy-shift'"):
        parse_defence("toy-shift:amount=1")
    with pytest.raises(ConfigError, match="unknown defence 'toy-shift'"):
        build_defences([DefenceSpec("toy-shift", {"amount": 1.0})])
    register_defence(ToyShift)  # for the fixture's clean-up


def test_at_most_one_query_gate(toys) -> None:
    with pytest.raises(ConfigError, match="query gate"):
        build_defences([parse_defence("query-budget:limit=5"),
                        parse_defence("toy-gate:per_call=1")])


def test_registry_refuses_malformed_defences(toys) -> None:
    def make(**attrs: object) -> type:
        return type("Bad", (OwnerDefence,), {"name": "bad", "params": {}, **attrs})

    cases = [
        (make(name="Bad Name"), "name"),
        (make(name=None), "name"),
        (make(params={"x": "float"}), "Param"),
        (make(params={"stream": Param("int")}), "'stream'"),
        (make(random=True), "'seed'"),
        (type("NotOne", (), {"name": "nope", "params": {}}), "OwnerDefence"),
    ]
    for cls, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            register_defence(cls)
    with pytest.raises(ConfigError, match="already registered"):
        register_defence(type("Other", (ToyShift,), {}))  # same name, another class
    register_defence(ToyShift)  # registering the same class again is harmless
    with pytest.raises(ConfigError, match="built-in"):
        unregister_defence("noise")
    assert "bad" not in DEFENCES and "noise" in DEFENCES
