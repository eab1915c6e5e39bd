"""The output intercept point: the softmax the server answers private inference with."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actors.backend import LocalBackend
from actors.lab import RunConfig, run_protocol
from protocol.errors import ConfigError

CFG = RunConfig(protocol="plaintext", epochs=2, attack_epochs=5, seed=0,
                adversaries=("eavesdropper", "server"), attacks=("output",))


@pytest.fixture(scope="module")
def plaintext(lab_setting):
    data, aux, judge = lab_setting
    backend = LocalBackend()
    return run_protocol(backend, CFG, data, aux, judge), backend


@pytest.mark.e2e
def test_both_adversaries_attack_the_output(plaintext, lab_setting):
    results, backend = plaintext
    data = lab_setting[0]
    assert [(r.adversary, r.attack_method) for r in results] == [
        ("eavesdropper", "output"), ("server", "output")]
    for r in results:
        assert r.reconstructions.shape == data.test.x.shape
        assert r.queries_used == len(lab_setting[1])
        # a 10-number softmax still tells the class: the reconstructions read as the digit
        assert r.attack.validator_accuracy > 0.5
        assert r.attack.validator_accuracy > 2 * r.baseline["validator_accuracy"]
    # the prediction API's own traffic never counts as the owner's private inference
    server = backend.party("server")
    assert len(server.intercepted_activations("owner:0").acts) == len(data.test.y)
    spy = backend.party("eavesdropper")
    assert len(spy.intercepted_outputs("owner:0")) == len(data.test.y)
    np.testing.assert_allclose(spy.intercepted_outputs("owner:0"),
                               server.intercepted_outputs("owner:0"), atol=1e-5)


@pytest.mark.e2e
def test_encryption_hides_the_output_from_the_wire(lab_setting):
    data, aux, judge = lab_setting
    (eaves,) = run_protocol(LocalBackend(), dataclasses.replace(
        CFG, protocol="encrypted", adversaries=("eavesdropper",)), data, aux, judge)
    assert eaves.attack.validator_accuracy < 0.3


def test_secret_sharing_has_no_output_to_attack(lab_setting):
    data, aux, judge = lab_setting
    with pytest.raises(ConfigError, match="one-server"):
        run_protocol(LocalBackend(), dataclasses.replace(CFG, protocol="secret-shared"),
                     data, aux, judge)
