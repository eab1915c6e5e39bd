"""Truncation wraps in the shared second part: their size, and the owner's check that says so.

A local truncation fails when the two shares of a product straddle the ring's wrap point; the
result is then off by ``ring.wrap_error`` (2^32 at 16 fractional bits). The run test injects
exactly that error into one truncation of a real secret-shared run and checks that
results.json records it (step, what, size), and that the same run without it records nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors import mpc_roles
from actors.backend import LocalBackend
from actors.data import load_target
from actors.lab import RunConfig, run_protocol
from actors.wrap_watch import WrapWatch, merge
from attack.validator import train_validator
from protocol import ring


def test_a_straddling_share_puts_the_result_off_by_the_wrap_error():
    f = 16
    x = int(ring.encode(np.array([1.5]), f)[0]) << f  # a product: 2f fractional bits
    # Party 0's share just above -2^63: party 1's, x - s0, wraps past +2^63.
    s0 = np.array([-(2**63) + x // 2], np.int64).view(np.uint64)
    s1 = np.array([x], np.uint64) - s0
    good = ring.decode(ring.truncate(s0 + s1, 0, f), f)  # one party holding x: exact
    bad = ring.decode(ring.truncate(s0, 0, f) + ring.truncate(s1, 1, f), f)
    assert good[0] == pytest.approx(1.5)
    assert abs(bad[0] - 1.5) == pytest.approx(ring.wrap_error(f), rel=1e-6)
    assert ring.wrap_error(f) == 2.0**32 and ring.wrap_suspect_bound(f) == 4096.0
    # The bound sits far below the error and far above what a trained model reveals.
    assert 100 * 25 < ring.wrap_suspect_bound(f) < ring.wrap_error(f) * 0.1 / 64 / 100


def test_the_watch_keeps_the_first_flag_and_counts_the_rest():
    watch = WrapWatch(16)
    assert not watch.check(np.array([[24.0, -3.0]]), "logits", 0)
    assert watch.check(np.array([[1.0, -5e6]]), "logits", 3)
    assert watch.check(np.array([1e8]), "cut-layer gradient", 4)
    assert watch.report("owner:0") == {"owner": "owner:0", "flagged": 2, "first": {
        "step": 3, "what": "logits", "max_abs": 5e6}}
    clean = merge(16, {"owner:0": WrapWatch(16).report("owner:0")})
    assert clean["wrap_suspected"] is False and clean["owners"] == {}
    assert merge(16, {"owner:0": watch.report("owner:0")})["wrap_suspected"] is True


@pytest.fixture(scope="module")
def setting():
    data = load_target(seed=0, n_train=192, n_test=50)
    judge = train_validator(data.train.x, data.train.y, data.classes, seed=0, epochs=1)
    return data, lambda: judge


def _run(setting):
    data, judge = setting
    cfg = RunConfig(protocol="secret-shared", epochs=1, attack_epochs=1, seed=0, aux="holdout",
                    adversaries=("eavesdropper",))
    (result,) = run_protocol(LocalBackend(), cfg, data, data.holdout.x[:100], judge)
    return result


@pytest.mark.e2e
def test_a_wrap_in_the_shared_part_is_recorded_not_silent(setting, monkeypatch, capsys):
    clean = _run(setting).mpc["fixed_point"]
    assert clean["wrap_suspected"] is False and clean["owners"] == {}

    # Step 1 (of 3): server 0's first truncation of a (64, 500) product, which is fc2's
    # forward output, comes back as a failed truncation would: off by 2^(64 - f) ring units.
    armed = {"step": None}
    truncate, remote_step = ring.truncate, mpc_roles.SharingOwner.remote_step

    def stepping(self, h, y, step=0):
        armed["step"] = step
        return remote_step(self, h, y, step)

    def wrapping(s, party, frac_bits=ring.DEFAULT_FRAC_BITS):
        out = truncate(s, party, frac_bits)
        if armed["step"] == 1 and party == 0 and s.shape == (64, 500):
            armed["step"] = None  # once
            out = out.copy()
            out[:1, :1] += np.uint64(2 ** (ring.RING_BITS - frac_bits))  # wraps mod 2^64
        return out

    monkeypatch.setattr(mpc_roles.SharingOwner, "remote_step", stepping)
    monkeypatch.setattr(ring, "truncate", wrapping)
    result = _run(setting)
    report = result.mpc["fixed_point"]
    assert report["wrap_suspected"] is True
    first = report["owners"]["owner:0"]["first"]
    assert first["step"] == 1 and first["what"] == "logits"
    assert first["max_abs"] > 1e6  # the wrap's 2^32 through fc3's weights
    assert result.to_json()["mpc"]["fixed_point"] == report
    assert "truncation wrap" in capsys.readouterr().err
