"""Defences wired into a run: what the owner sends, what the oracle answers, what it costs."""

from __future__ import annotations

import numpy as np
import pytest

from actors.backend import LocalBackend
from actors.data import load_target
from actors.lab import RunConfig, run_protocol
from actors.simulate import main
from attack.auxiliary import load_aux
from attack.validator import train_validator


@pytest.fixture(scope="module")
def setting():
    data = load_target(seed=0)
    aux = load_aux("letters", 1200, 0, data.input_shape)
    judge = train_validator(data.train.x[:1000], data.train.y[:1000], data.classes, seed=0,
                            epochs=1)
    return data, aux, lambda: judge


def run(setting, defences=(), attacks=("mlp",), epochs=1):
    data, aux, judge = setting
    cfg = RunConfig(protocol="plaintext", epochs=epochs, attack_epochs=3, seed=0,
                    adversaries=("eavesdropper",), defences=defences, attacks=attacks)
    backend = LocalBackend()
    return run_protocol(backend, cfg, data, aux, judge), backend


@pytest.mark.e2e
def test_query_budget_caps_what_the_attacker_gets(setting):
    (result,), backend = run(setting, ("query-budget:limit=700",))
    assert result.queries_used == 700  # 500, then 200 of the next 500, then refused
    owner = backend.party("owner:0")
    assert owner.defences.budget.answered("eavesdropper") == 700
    assert owner.queries_answered == 700


@pytest.mark.e2e
def test_each_intercept_point_gets_the_whole_budget(setting):
    # mlp and conv share the cut-layer answers; the output rung is another way to spend the
    # same budget, so it is scored as if the attacker had spent all of it there.
    results, backend = run(setting, ("query-budget:limit=300",), attacks=("mlp", "conv",
                                                                          "output"))
    assert [r.queries_used for r in results] == [300, 300, 300]
    owner = backend.party("owner:0")
    assert owner.queries_answered == 600  # 300 first-part answers, 300 predictions
    assert owner.defences.budget.answered("eavesdropper") == 300  # the output rung's spend


@pytest.mark.e2e
def test_an_adversary_with_the_weights_ignores_the_budget(setting):
    # The budget starves the oracle-trained decoder; one that runs the known first part
    # itself needs no query and reconstructs far better.
    starved, local = run(setting, ("query-budget:limit=20",), attacks=("mlp", "whitebox-conv"),
                         epochs=2)[0]
    assert starved.queries_used == 20 and local.queries_used == 0
    assert local.attack.ssim > starved.attack.ssim + 0.1
    assert local.attack.validator_accuracy > starved.attack.validator_accuracy + 0.2


@pytest.mark.e2e
def test_too_few_images_to_train_on_give_the_mean_guess(setting):
    # One answered query, or one auxiliary image for the weights-holder: no decoder can be
    # fit on a single pair, so every rung falls back to the mean image instead of failing.
    data, aux, judge = setting
    cfg = RunConfig(protocol="plaintext", epochs=1, attack_epochs=1, seed=0,
                    adversaries=("eavesdropper",), defences=("query-budget:limit=1",),
                    attacks=("conv", "whitebox-conv"))
    results = run_protocol(LocalBackend(), cfg, data, aux[:1], judge)
    for r in results:
        assert np.allclose(r.reconstructions, aux[:1]), r.attack_method


@pytest.mark.e2e
def test_noise_reports_its_epsilon_and_perturbs_the_wire(setting):
    (plain,), _ = run(setting)
    (noisy,), backend = run(setting, ("noise:mechanism=laplace,scale=0.5,clip=64",))
    assert noisy.epsilon == pytest.approx((2 * 64 / 0.5, 0.0))
    assert noisy.to_json()["epsilon"]["epsilon"] == pytest.approx(256.0)
    spy = backend.roles["eavesdropper"]
    acts = spy.intercepted_activations("owner:0").acts
    owner = backend.party("owner:0")
    import torch

    with torch.no_grad():
        clean = owner.model(torch.from_numpy(setting[0].test.x)).numpy()
    assert np.abs(acts - clean).mean() > 0.3  # Laplace(0.5) has mean |noise| 0.5
    assert noisy.target_accuracy < plain.target_accuracy + 0.02


@pytest.mark.e2e
def test_whitebox_attack_runs_without_queries(setting):
    (result,), _ = run(setting, attacks=("whitebox",))
    assert result.attack_method == "whitebox" and result.queries_used == 0
    assert result.attack.validator_accuracy > 0.5


def test_defence_flags_are_checked_before_anything_runs(capsys):
    for flags in (["--defence", "noise:mechanism=laplace,scale=-1,clip=5"],
                  ["--defence", "shield:level=9"],
                  ["--defence", "dropout:rate=0.5", "--defence", "dropout:rate=0.2"],
                  ["--attack", "psychic"]):
        with pytest.raises(SystemExit) as exc:
            main(flags)
        assert exc.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
