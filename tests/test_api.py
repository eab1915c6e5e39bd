"""The Python entry point: a notebook audits a network without the CLI."""

from __future__ import annotations

import json

import pytest

from actors.api import LabOptions, audit, run_lab
from actors.nets.zoo import ModelSpec, build_network
from protocol.errors import ConfigError


@pytest.mark.e2e
def test_audit_a_builtin_cut_returns_typed_results():
    report = audit("cnn", cut="pool2", backend="local", protocols=("plaintext",), lr=0.05,
                   adversaries=("eavesdropper", "server"), attacks=("mlp",), epochs=1,
                   attack_epochs=1, aux_size=200)
    assert report.network.cut_shape == (16, 4, 4)
    assert [(r.adversary, r.attack_method) for r in report.runs] == [
        ("eavesdropper", "mlp"), ("server", "mlp")]
    run = report.runs[0]
    assert run.reconstructions.shape == run.originals.shape == (500, 1, 28, 28)
    assert 0.0 <= run.attack.ssim <= 1.0 and run.target_accuracy > 0.2
    doc = json.loads(json.dumps(report.to_json()))  # the results.json schema, serialisable
    assert doc["schema"] == 1 and doc["network"]["cut"] == "pool2"
    assert doc["config"]["model"] == "cnn" and len(doc["runs"]) == 2


def test_a_descriptor_object_is_accepted_and_checked_against_the_data():
    net = build_network(ModelSpec("cnn-rgb"), 0)
    with pytest.raises(ConfigError, match="3, 32, 32"):
        run_lab(LabOptions(model=net, backend="local"))  # mnist-small is 1x28x28


def test_unknown_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown attack"):
        LabOptions(attacks=("nope",))
    with pytest.raises(ConfigError, match="unknown adversary"):
        LabOptions(adversaries=("mallory",))
