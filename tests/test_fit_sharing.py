"""Adversaries that would train on the same bytes fit once, and nothing they report changes."""

from __future__ import annotations

import numpy as np
import pytest

from actors.api import LabOptions, run_lab
from attack.fit_sharing import FitLedger, fit_digest
from attack.inversion import BlackBoxInversion


def _pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(16, 5)).astype(np.float32),
            rng.uniform(size=(16, 1, 4, 4)).astype(np.float32))


def test_the_digest_names_every_input_of_the_fit():
    acts, images = _pairs()
    rung = BlackBoxInversion(epochs=2, seed=0)
    same = fit_digest(BlackBoxInversion(epochs=2, seed=0), acts.copy(), images.copy())
    assert fit_digest(rung, acts, images) == same
    flipped = acts.copy()
    flipped[3, 2] = np.nextafter(flipped[3, 2], np.float32(np.inf))  # one bit of one value
    others = {fit_digest(rung, flipped, images),
              fit_digest(rung, acts, images[::-1].copy()),
              fit_digest(BlackBoxInversion(epochs=2, seed=1), acts, images),
              fit_digest(BlackBoxInversion(epochs=3, seed=0), acts, images),
              fit_digest(rung, acts.reshape(16, 5, 1), images)}  # same bytes, other shape
    assert same not in others and len(others) == 5


def test_the_ledger_shares_only_when_asked():
    rung = BlackBoxInversion()
    shared, separate = FitLedger(), FitLedger(share=False)
    assert shared.key("d", "plaintext server") == "d"
    assert separate.key("d", "a") != separate.key("d", "b")
    assert shared.key(None, "a") is None and shared.report(None, "a") is None
    shared.add("d", rung, "plaintext eavesdropper")
    assert shared.get("d") is rung and "d" in shared
    assert shared.report("d", "encrypted server") == {
        "digest": "d", "fitted_by": "plaintext eavesdropper", "shared": True}
    assert shared.report("d", "plaintext eavesdropper")["shared"] is False
    key = separate.key("d", "a")
    separate.add(key, rung, "a")
    assert separate.report(key, "a") == {"digest": "d", "fitted_by": "a", "shared": False}


@pytest.mark.e2e
def test_a_shared_fit_gives_every_adversary_the_numbers_of_its_own():
    """Plaintext and encrypted train the same first part bit for bit, so all four adversaries
    train on the same pairs: one fit serves them; each fitting its own gives the same images."""
    options = dict(backend="local", protocols=("plaintext", "encrypted"), train_size=400,
                   epochs=1, attack_epochs=2, aux_size=300, adversaries=("eavesdropper", "server"))
    shared = run_lab(LabOptions(**options)).runs
    separate = run_lab(LabOptions(**options, share_fits=False)).runs
    runs = {(r.protocol, r.adversary): r for r in shared}
    own = {(r.protocol, r.adversary): r for r in separate}
    assert len(runs) == len(own) == 4
    assert len({r.fit["digest"] for r in shared}) == 1  # one set of training pairs ...
    assert {r.fit["fitted_by"] for r in shared} == {"plaintext eavesdropper"}  # ... one fit
    assert [k for k, r in runs.items() if not r.fit["shared"]] == [("plaintext", "eavesdropper")]
    assert all(not r.fit["shared"] for r in separate)
    assert len({r.fit["fitted_by"] for r in separate}) == 4
    for key in [("plaintext", "eavesdropper"), ("plaintext", "server"), ("encrypted", "server")]:
        np.testing.assert_array_equal(runs[key].reconstructions, own[key].reconstructions)
        assert runs[key].attack.ssim == own[key].attack.ssim
    # The encrypted eavesdropper inverts ciphertext (fresh keys each run): its images differ
    # between the two runs, but it was handed the same decoder.
    assert runs[("encrypted", "eavesdropper")].fit["digest"] == own[(
        "encrypted", "eavesdropper")].fit["digest"]


def test_two_server_protocols_get_a_lane_of_their_own_on_ray_only():
    from actors.api import protocol_lanes

    every = ["plaintext", "encrypted", "secret-shared"]
    assert protocol_lanes(LabOptions(), every) == [["secret-shared"],
                                                        ["plaintext", "encrypted"]]
    assert protocol_lanes(LabOptions(overlap_protocols=False), every) == [every]
    assert protocol_lanes(LabOptions(backend="local"), every) == [every]
    assert protocol_lanes(LabOptions(), ["plaintext", "encrypted"]) == [
        ["plaintext", "encrypted"]]
