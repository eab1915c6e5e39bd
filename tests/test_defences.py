"""Defences: privacy accounting, clipping and noise, NoPeek, dropout, query budgets, the flag."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from defences import (
    DEFENCES,
    CutLayerDropout,
    CutLayerNoise,
    DefenceSpec,
    NoPeek,
    QueryBudget,
    QueryBudgetExceeded,
    analytic_gaussian_epsilon,
    build_defences,
    classic_gaussian_epsilon,
    distance_correlation,
    parse_defence,
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


@pytest.mark.parametrize(("mechanism", "order"), [("laplace", 1), ("gaussian", 2)])
def test_clipping_bounds_row_norms(mechanism: str, order: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(64, 500) * torch.logspace(-3, 2, 64)[:, None]
    # A scale too small to matter shows the clipped rows themselves.
    noise = CutLayerNoise(mechanism, scale=1e-12, clip=5.0)
    out = noise(h)
    norms = torch.linalg.vector_norm(out, ord=order, dim=1)
    assert float(norms.max()) <= 5.0 * (1 + 1e-5)
    small = torch.linalg.vector_norm(h, ord=order, dim=1) < 5.0
    assert small.any() and (~small).any()
    torch.testing.assert_close(out[small], h[small])  # rows inside the ball are left alone
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
