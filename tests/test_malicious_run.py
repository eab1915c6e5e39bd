"""A malicious compute server (FSHA) in a whole run, in-process (LocalBackend: no Ray).

Plaintext at small scale: the owner's first part, trained only on the server's hijacking
gradients, ends in the server's feature space, so its decoder rebuilds the private test digits
(SSIM well above the mean image's, validator far above chance) and the curve over training
is scored against the true training batches. Secret-shared, server 0 alone: it sees one
uniformly random share of each batch, so what it rebuilds stays at chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.backend import LocalBackend
from actors.data import load_target
from actors.fsha_pilot import DEFAULT_PILOT, PILOTS
from actors.lab import RunConfig, run_protocol
from actors.malicious import MALICIOUS_SERVER, MaliciousServer, MaliciousShareServer
from actors.owner import TrainConfig
from actors.wire import LocalTransport, Network
from attack.validator import train_validator
from protocol.errors import ConfigError
from tests.helpers import mlp_net


@pytest.fixture(scope="module")
def setting():
    data = load_target(seed=0, n_train=1024, n_test=200)
    judge = train_validator(data.train.x, data.train.y, data.classes, seed=0, epochs=2)
    return data, lambda: judge


#: Autoencoder steps before training: a fifth of the lab's default (it costs about 30 ms a
#: step here); the hijack still rebuilds the digits within the test's run (measured: SSIM
#: 0.54 against the mean image's 0.18 after 192 steps, validator 64%).
WARMUP = 100


def _run(setting, protocol: str, epochs: int, pilot: str = DEFAULT_PILOT):
    data, judge = setting
    cfg = RunConfig(protocol=protocol, epochs=epochs, seed=0, aux="holdout",
                    adversaries=(MALICIOUS_SERVER,), fsha_warmup=WARMUP, fsha_pilot=pilot)
    backend = LocalBackend()
    # The attacker's public data: the holdout digits (the authors' setting, same distribution).
    (result,) = run_protocol(backend, cfg, data, data.holdout.x, judge)
    return result, backend


@pytest.mark.e2e
def test_fsha_rebuilds_private_digits_on_plaintext(setting):
    result, backend = _run(setting, "plaintext", epochs=12)  # 192 steps
    assert result.adversary == MALICIOUS_SERVER and result.attack_method == "fsha"
    assert isinstance(backend.party("server"), MaliciousServer)
    assert result.attack.ssim > result.baseline["ssim"] + 0.2, (result.attack, result.baseline)
    assert result.attack.validator_accuracy > 0.5
    curve = result.fsha_curve
    assert [p["step"] for p in curve] == sorted(p["step"] for p in curve) and len(curve) >= 10
    assert curve[-1]["step"] == 192
    # Scored against the batches the owner really sent (against any other digits the SSIM
    # would sit near the mean image's): every point of the curve is far above the mean image.
    assert min(p["ssim"] for p in curve) > result.baseline["ssim"] + 0.2, (curve,
                                                                          result.baseline)
    assert result.to_json()["fsha_curve"] == curve


@pytest.mark.e2e
def test_one_malicious_share_server_stays_at_chance(setting):
    result, backend = _run(setting, "secret-shared", epochs=1)  # 16 steps
    server = backend.party("server:0")
    assert isinstance(server, MaliciousShareServer) and server.fsha.steps == 16
    assert result.attack.validator_accuracy <= 0.2
    assert result.attack.ssim < result.baseline["ssim"] + 0.05
    assert np.isfinite(result.target_accuracy)


def _pilot_moved(pilot: str, warmup: int) -> tuple[bool, bool]:
    """Arm a malicious server with ``--fsha-pilot pilot``: does its pilot differ from the
    first part's initial weights (before any owner batch), and did the warm-up move it?"""
    net = mlp_net(0)
    server = MaliciousServer("server", codec="plaintext", session=1,
                             network=Network("server", LocalTransport()), net=net,
                             config=TrainConfig())
    aux = np.random.default_rng(0).random((128, *net.input_shape), dtype=np.float32)
    initial = net.owner_part().state_dict()
    server.arm(aux, seed=0, total_steps=4, settings={"warmup": 0}, pilot=pilot)
    start = {k: v.clone() for k, v in server.fsha.encoder.state_dict().items()}
    server.arm(aux, seed=0, total_steps=4, settings={"warmup": warmup}, pilot=pilot)
    after = server.fsha.encoder.state_dict()
    assert server.pilot == pilot and server.fsha_state()["pilot"] == pilot
    differs = any(not torch.equal(start[k], initial[k]) for k in initial)
    moved = any(not torch.equal(start[k], after[k]) for k in start)
    return differs, moved


@pytest.mark.parametrize(("pilot", "differs", "moved"), [
    ("held", False, False),  # the owner's initial first part, never trained
    ("trained", False, True),  # the authors' algorithm from the initial weights
    ("own", True, True),  # the paper's: the attacker's own weights, trained
])
def test_each_fsha_pilot_starts_and_trains_as_it_says(pilot, differs, moved):
    assert pilot in PILOTS
    assert _pilot_moved(pilot, warmup=3) == (differs, moved)


def test_an_fsha_pilot_is_checked_where_it_is_given():
    from actors.api import LabOptions

    with pytest.raises(ConfigError, match="--fsha-pilot must be one of"):
        RunConfig(protocol="plaintext", fsha_pilot="frozen")
    with pytest.raises(ConfigError, match="needs --adversary malicious-server"):
        LabOptions(fsha_pilot="trained")  # no malicious server: it would be ignored
    assert LabOptions(adversaries=(MALICIOUS_SERVER,), fsha_pilot="own").fsha_pilot == "own"


@pytest.mark.e2e
def test_the_authors_pilot_reaches_the_server_of_a_whole_run(setting):
    result, backend = _run(setting, "plaintext", epochs=1, pilot="own")
    assert result.attack_method == "fsha/own"
    assert backend.party("server").pilot == "own"


def test_a_malicious_server_runs_alone():
    from actors.api import LabOptions

    with pytest.raises(ConfigError, match="on its own"):
        LabOptions(adversaries=(MALICIOUS_SERVER, "eavesdropper"))
    LabOptions(adversaries=(MALICIOUS_SERVER,))


def test_a_malicious_server_needs_the_vanilla_topology():
    from actors.api import LabOptions

    with pytest.raises(ConfigError, match="topology vanilla"):
        LabOptions(adversaries=(MALICIOUS_SERVER,), topology="u-shaped")
