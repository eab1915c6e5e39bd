"""End to end, in-process: encryption stops the eavesdropper, not the curious server."""

from __future__ import annotations

import json

import pytest

from actors.backend import LocalBackend
from actors.lab import ADVERSARIES, EAVESDROPPER, RunConfig, run_protocol

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def setting(lab_setting):
    return lab_setting


@pytest.fixture(scope="module")
def runs(setting):
    data, aux, judge = setting
    out, backends = {}, {}
    for protocol in ("plaintext", "encrypted"):
        backend = LocalBackend()
        cfg = RunConfig(protocol=protocol, epochs=3, attack_epochs=12, seed=0,
                        adversaries=ADVERSARIES)
        out[protocol] = {r.adversary: r for r in run_protocol(backend, cfg, data, aux, judge)}
        backends[protocol] = backend
    return out, backends


def test_encryption_does_not_change_training(runs):
    out, _ = runs
    plain, enc = out["plaintext"]["server"], out["encrypted"]["server"]
    assert enc.target_accuracy == pytest.approx(plain.target_accuracy, abs=0.005)
    assert enc.epoch_losses == pytest.approx(plain.epoch_losses, rel=1e-5)
    assert enc.target_accuracy > 0.9


def test_eavesdropper_fails_on_ciphertext_but_server_still_wins(runs):
    out, _ = runs
    enc = out["encrypted"]
    assert out["plaintext"]["eavesdropper"].attack.validator_accuracy > 0.6
    assert enc["eavesdropper"].attack.validator_accuracy <= 0.2
    assert enc["eavesdropper"].attack.ssim < enc["eavesdropper"].baseline["ssim"]
    assert enc["server"].attack.validator_accuracy > 0.6
    assert enc["server"].attack.validator_accuracy == pytest.approx(
        out["plaintext"]["server"].attack.validator_accuracy, abs=0.05)


def test_no_key_material_in_capture_or_results(runs):
    out, backends = runs
    backend = backends["encrypted"]
    secrets = [role.endpoint.codec._identity._key.private_bytes_raw()
               for role in map(backend.party, backend.host_of)]
    capture = b"".join(frame for _, _, frame in backend.call(EAVESDROPPER, "capture"))
    assert len(capture) > 500_000
    results = json.dumps([r.to_json() for r in out["encrypted"].values()]).encode()
    for secret in secrets:
        assert len(secret) == 32
        assert secret not in capture and secret.hex().encode() not in results
    for role in backend.roles.values():  # and every link was refused nothing on the way
        assert sum(role.wire_stats().dropped.values()) == 0
