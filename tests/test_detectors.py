"""The owner that checks its server: SplitGuard and SplitOut against FSHA and an honest server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.data import load_target
from actors.fsha_pilot import PILOTS
from actors.simulate import main
from attack.auxiliary import load_aux
from attack.validator import train_validator
from defences.base import Observation, OwnerContext, ServerJudgedMalicious, Verdict
from defences.spec import build_defences, parse_defence
from defences.splitguard import SplitGuard, _GradientSet, splitguard_score
from protocol.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import detectors  # noqa: E402 - bench/ is not a package


@pytest.fixture(scope="module")
def setting():
    data = load_target(seed=0, n_train=1000)
    aux = np.ascontiguousarray(load_aux("letters", 1000, 0, data.input_shape))
    judge = train_validator(data.train.x[:500], data.train.y[:500], data.classes, seed=0,
                            epochs=1)
    return data, aux, judge


@pytest.mark.e2e
@pytest.mark.parametrize("detector", ["splitguard", "splitout"])
def test_detector_flags_fsha_and_not_the_honest_server(setting, detector):
    data, aux, judge = setting
    # Shorter than the defaults so the test stays fast: SplitGuard probes from batch 5 with
    # p=0.3, SplitOut simulates 30 steps; FSHA warms its autoencoder up for 50 steps, not 500.
    spec = ({"splitguard": "splitguard:seed=0,start=5,p=0.3",
             "splitout": "splitout:seed=0,steps=30"}[detector],)
    # The lab's FSHA (its pilot held at the first part's initial weights) and the authors'
    # (the pilot trained with the decoder).
    hijacked, authors = (
        detectors.run_one(data, aux, judge, server="fsha", defences=spec, seed=0, epochs=2,
                          fsha_settings={"warmup": 50}, pilot=PILOTS[pilot])
        for pilot in ("held", "trained"))
    honest = detectors.run_one(data, aux, judge, server="honest", defences=spec, seed=0,
                               epochs=2)
    for run in (hijacked, authors):
        assert run["detected"] and run["step"] < run["steps_planned"]
        assert run["detector"] == detector and run["reason"]
    # The authors' FSHA is caught early: its decoder cannot yet rebuild the digits (He et al.:
    # SSIM < 0.3 is unrecognisable) and the validator is near chance. The lab's inverts the
    # owner's initial features from the first batch, so being caught does not stop it.
    assert authors["fsha_ssim"] < 0.3 and authors["fsha_validator_accuracy"] < 0.3
    assert hijacked["fsha_ssim"] > authors["fsha_ssim"]
    assert not honest["detected"], honest["reason"]
    assert honest["target_accuracy"] > 0.6  # trained on (no detector: 0.86 here)


@pytest.mark.e2e
def test_an_aborted_run_writes_its_results_and_capture(tmp_path, capsys):
    out, capture = tmp_path / "run", tmp_path / "wire.swcap"
    code = main(["--protocol", "plaintext", "--adversary", "malicious-server",
                 "--backend", "local",
                 "--epochs", "1", "--train-size", "500", "--aux-size", "300",
                 "--attack-epochs", "1", "--defence", "splitout:seed=0", "--quiet",
                 "--fsha-warmup", "20",
                 "--capture", str(capture), "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    detection = run["detection"]
    assert detection["detector"] == "splitout" and detection["owner"] == "owner:0"
    assert 0 <= detection["step"] < detection["steps_planned"] == 8
    assert detection["steps_trained"] == detection["step"] + 1 == run["batches"]["sent"]
    assert "judged the server malicious" in capsys.readouterr().err
    # Everything after training still happened: inference, the attack, the figure, the wire.
    assert 0 <= run["target_accuracy"] <= 1 and run["attack"]["ssim"] is not None
    assert run["fsha_curve"] and run["fsha_curve"][-1]["step"] <= detection["steps_trained"]
    assert (out / "reconstructions.png").stat().st_size > 0
    assert capture.stat().st_size > 0


def test_the_score_separates_label_blind_gradients_from_honest_ones():
    gen = torch.Generator().manual_seed(0)
    regular = [torch.randn(50, generator=gen) * 0.1 + torch.ones(50) for _ in range(20)]
    sets = _GradientSet(), _GradientSet()
    for i, v in enumerate(regular):
        sets[i % 2].add(v)
    honest_fakes, blind_fakes = _GradientSet(), _GradientSet()
    for _ in range(3):  # honest: other labels, other direction, larger
        honest_fakes.add(-3 * torch.ones(50) + torch.randn(50, generator=gen) * 0.1)
        blind_fakes.add(torch.ones(50) + torch.randn(50, generator=gen) * 0.1)
    honest, _ = splitguard_score(honest_fakes, *sets, alpha=5, beta=2)
    blind, _ = splitguard_score(blind_fakes, *sets, alpha=5, beta=2)
    assert honest > 0.95 and blind < 0.6


def test_fake_batches_have_wrong_labels_and_start_late():
    guard = SplitGuard(p=1.0, start=3, seed=1)
    net = type("Net", (), {"classes": 10})()
    guard.bind(OwnerContext(net, torch.zeros(1), torch.zeros(1), 64, 0.1, 0.9))
    y = torch.arange(10).repeat(20)
    model = torch.nn.Linear(4, 2)
    for step in range(3):  # the first ``start`` batches are never probes
        assert guard.fake_labels(step, y) is None
        h = model(torch.zeros(len(y), 4))
        guard.observe_gradient(Observation(step, torch.zeros(1), y, h,
                                           np.zeros((len(y), 2), np.float32), False, model))
    fake = guard.fake_labels(3, y)
    assert fake is not None and bool((fake != y).all())
    assert set(((fake - y) % 10).tolist()) <= set(range(1, 9))


def test_a_verdict_survives_pickling():
    import pickle

    exc = ServerJudgedMalicious(Verdict("splitguard", 7, 0.2, "why"), "owner:1")
    back = pickle.loads(pickle.dumps(exc))
    assert back.verdict == exc.verdict and back.owner == "owner:1" and str(back) == str(exc)


@pytest.mark.parametrize("text", [
    "splitguard:p=1.5", "splitguard:threshold=2", "splitguard:window=0", "splitguard:alpha=0",
    "splitguard:colour=red", "splitout:model=svm", "splitout:fraction=0", "splitout:steps=1",
    "splitout:ratio=1.5",
])
def test_bad_detector_parameters_are_config_errors(text):
    with pytest.raises(ConfigError, match="--defence"):
        build_defences([parse_defence(text)])


def test_bad_detector_parameters_exit_2_at_the_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--defence", "splitguard:threshold=2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "threshold" in err
