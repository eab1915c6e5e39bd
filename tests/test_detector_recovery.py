"""Detectors and a malicious server across failures: ``--chaos`` rollbacks and ``--resume``.

The owner's detectors (SplitGuard, SplitOut) and the malicious server's FSHA state are part of
the lab's checkpoints. Every run here is in-process (``LocalBackend``) and deterministic, so a
run with a kill must equal the same run without one: the same verdict at the same step with
the same score, the same score / outlier history (a step replayed after the rollback counted
once), the same hijacker step count and attack curve.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from actors.backend import LocalBackend
from actors.data import load_target
from actors.lab import RunConfig, run_protocol
from actors.malicious import MALICIOUS_SERVER, MaliciousServer
from actors.training import CHECKPOINT_FORMAT
from attack.auxiliary import load_aux
from attack.validator import train_validator
from defences.base import Observation, OwnerContext
from defences.splitguard import SplitGuard
from defences.splitout import SplitOut
from protocol.errors import ConfigError
from tests.helpers import mlp_net

GUARD = "splitguard:seed=0,start=5,p=0.3"
#: SplitGuard that never judges (a mean score is always >= 0): its history runs to the end.
GUARD_NEVER = "splitguard:seed=0,start=5,p=0.3,threshold=0"
OUT = "splitout:seed=0,steps=30"
#: Checkpoints every 3 steps; 1000 examples in batches of 64: 16 steps an epoch, 32 in all.
BASE = RunConfig(protocol="plaintext", epochs=2, seed=0, attack_epochs=1, fsha_warmup=50,
                 checkpoint_every=3)


@pytest.fixture(scope="module")
def setting():
    data = load_target(seed=0, n_train=1000, n_test=100)
    aux = np.ascontiguousarray(load_aux("letters", 300, 0, data.input_shape))
    judge = train_validator(data.train.x[:200], data.train.y[:200], data.classes, seed=0,
                            epochs=1)
    return data, aux, judge


def run(setting, defence: str, malicious: bool = False, on_checkpoint=None, **changes):
    data, aux, judge = setting
    cfg = dataclasses.replace(BASE, defences=(defence,),
                              adversaries=(MALICIOUS_SERVER if malicious else "eavesdropper",),
                              **changes)
    backend = LocalBackend()
    (result,) = run_protocol(backend, cfg, data, aux, lambda: judge,
                             on_checkpoint=on_checkpoint)
    return result, backend


def detector(backend: LocalBackend):
    (check,) = backend.party("owner:0").defences.checks
    return check


@pytest.fixture(scope="module")
def hijacked(setting):
    """FSHA against SplitGuard, no failure: judged at step 19 (fakes scored at 12, 14, 19)."""
    result, backend = run(setting, GUARD, malicious=True)
    return result, detector(backend), backend.party("server")


# --- kill + rollback ------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("role", ["owner:0", "server"])
def test_a_kill_and_rollback_keeps_the_verdict_and_the_attack(setting, hijacked, role):
    clean, guard, server = hijacked
    assert clean.detection is not None and clean.detection["step"] == 19
    # Killed at 13, rolled back to the checkpoint at 12: the fake batch of step 12 is
    # replayed. Without its state in the checkpoint, a restarted owner's SplitGuard starts
    # from zero (no probes for 5 more batches, no verdict by 19) and a live one scores the
    # replayed fake twice (history 12, 12, 14, ...), judging at another step or score.
    result, backend = run(setting, GUARD, malicious=True, chaos=(f"{role}@13",))
    assert result.restarts == 1 and result.batches["retried"] >= 1
    assert result.detection == clean.detection  # step, score and reason, to the last bit
    again = detector(backend)
    assert again.history == guard.history and again.batches == guard.batches
    assert again.fakes.n == guard.fakes.n and again.r1.n + again.r2.n == guard.r1.n + guard.r2.n
    # The malicious server (killed or not) went on with its attack: one FSHA step per batch
    # it applied, and the same curve as without the kill.
    hijacker = backend.party("server")
    assert hijacker.fsha.steps == server.fsha.steps == result.batches["applied"] == 20
    assert result.fsha_curve == clean.fsha_curve and result.epoch_losses == clean.epoch_losses


@pytest.mark.e2e
def test_splitout_continues_after_a_killed_owner(setting):
    clean, backend = run(setting, OUT)
    assert clean.detection is None  # honest server: 30 checks, no verdict
    reference = detector(backend)
    result, backend = run(setting, OUT, chaos=("owner:0@10",))
    assert result.restarts == 1 and result.detection is None
    out = detector(backend)
    # Refitted from the checkpointed features: the same reference model. (Without them the
    # restarted owner simulates again and checks 30 more steps from step 9 on: 21 + 30.)
    assert out.history == reference.history and out.checked == reference.checked == 30
    np.testing.assert_array_equal(out.honest, reference.honest)


# --- --resume --------------------------------------------------------------------------------
class Stop(Exception):
    pass


def stop_at(step: int):
    def hook(at: int) -> None:
        if at >= step:
            raise Stop

    return hook


@pytest.mark.e2e
def test_a_resumed_splitguard_continues_its_history(setting, tmp_path):
    clean, backend = run(setting, GUARD_NEVER)
    full = detector(backend).history
    ck = str(tmp_path / "ck")
    with pytest.raises(Stop):  # stopped after the first epoch's checkpoint (step 16)
        run(setting, GUARD_NEVER, checkpoint_dir=ck, on_checkpoint=stop_at(16))
    with np.load(f"{ck}/state.npz", allow_pickle=False) as z:
        saved = int(z["checks.owner:0.splitguard.history.step"].size)
    assert json.loads(open(f"{ck}/checkpoint.json").read())["format"] == CHECKPOINT_FORMAT
    assert 0 < saved < len(full)
    result, backend = run(setting, GUARD_NEVER, checkpoint_dir=ck, resume=ck)
    guard = detector(backend)
    # The history goes on from the checkpoint's (not from zero: a fresh SplitGuard would
    # not probe before batch 5 of the resumed part, and its history would be shorter).
    assert guard.history == full and guard.batches == 32
    assert result.epoch_losses == clean.epoch_losses
    assert result.batches["sent"] == result.batches["applied"] == 32


@pytest.mark.e2e
def test_a_verdict_survives_a_resume(setting, tmp_path):
    ck = str(tmp_path / "ck")
    first, backend = run(setting, OUT, malicious=True, checkpoint_dir=ck)
    assert first.detection is not None and first.detection["step"] == 4
    meta = json.loads(open(f"{ck}/checkpoint.json").read())
    assert meta["detection"]["step"] == 4 and meta["detection"]["owner"] == "owner:0"
    steps = backend.party("server").fsha.steps
    result, backend = run(setting, OUT, malicious=True, checkpoint_dir=ck, resume=ck)
    # The same verdict, and no training past it: the server is as it was when judged.
    assert result.detection == first.detection
    assert result.batches == first.batches and backend.party("server").fsha.steps == steps
    assert detector(backend).history == [(s, True) for s in range(5)]
    assert result.target_accuracy == first.target_accuracy


@pytest.mark.e2e
def test_a_format_1_checkpoint_cannot_resume_detectors(setting, tmp_path):
    ck = tmp_path / "ck"
    with pytest.raises(Stop):
        run(setting, OUT, checkpoint_dir=str(ck), on_checkpoint=stop_at(16))
    meta = json.loads((ck / "checkpoint.json").read_text())
    (ck / "checkpoint.json").write_text(json.dumps(meta | {"format": "splitwire-checkpoint/1"}))
    with pytest.raises(ConfigError, match="no detector state"):
        run(setting, OUT, checkpoint_dir=str(ck), resume=str(ck))


# --- the state itself, Ray-free --------------------------------------------------------------
def _observations(n: int, seed: int = 0):
    """n training steps of a real first part against a fixed linear 'server'."""
    net = mlp_net(0)
    model = net.owner_part()
    gen = torch.Generator().manual_seed(seed)
    for step in range(n):
        x = torch.rand(16, *net.input_shape, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        h = model(x)
        grad = (h.detach() * 0.01 + 0.001 * (y[:, None].float() - 4.5)).numpy()
        yield step, x, y, h, grad, model


def _drive(guard: SplitGuard, steps) -> list:
    out = []
    for step, x, y, h, grad, model in steps:
        fake = guard.fake_labels(step, y)
        verdict = guard.observe_gradient(
            Observation(step, x, y if fake is None else fake, h, grad, fake is not None, model))
        out.append((fake is not None, verdict))
    return out


def test_splitguard_state_round_trips_and_continues_alike():
    context = OwnerContext(mlp_net(0), torch.zeros(1), torch.zeros(1), 16, 0.1, 0.9)
    steps = list(_observations(24))
    a = SplitGuard(p=0.4, start=3, seed=2)
    a.bind(context)
    _drive(a, steps[:12])
    saved = {k: v.copy() for k, v in a.state().items()}
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in saved.values())
    b = SplitGuard(p=0.4, start=3, seed=2)
    b.bind(context)
    b.load_state(saved)
    assert _drive(a, steps[12:]) == _drive(b, steps[12:])  # same probes, same verdicts
    assert a.history == b.history and len(a.history) > 0
    torch.testing.assert_close(a.r1.total, b.r1.total, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="splitguard"):
        b.load_state({k: v for k, v in saved.items() if k != "r1.n"})
    with pytest.raises(ConfigError, match="splitguard"):
        b.load_state(saved | {"scores": np.zeros(9)})  # longer than the window


def test_splitout_state_refuses_a_malformed_reference():
    out = SplitOut(steps=10, seed=0)
    state = out.state()
    assert state["honest"].shape == (0, 3)  # not fitted yet: the fit happens after a load
    with pytest.raises(ConfigError, match="splitout"):
        out.load_state(state | {"honest": np.zeros((4, 2))})
    with pytest.raises(ConfigError, match="splitout"):
        out.load_state(state | {"gen": np.zeros(3, np.float32)})


def test_a_restarted_malicious_server_continues_its_attack():
    net = mlp_net(0)
    aux = np.random.default_rng(0).random((200, *net.input_shape), dtype=np.float32)
    from actors.owner import TrainConfig
    from actors.wire import LocalTransport, Network

    def server():
        return MaliciousServer("server", codec="plaintext", session=1,
                               network=Network("server", LocalTransport()), net=net,
                               config=TrainConfig())

    rng = np.random.default_rng(1)
    batches = [(rng.random((16, *net.cut_shape), dtype=np.float32),
                rng.integers(0, 10, 16).astype(np.int64)) for _ in range(6)]
    a = server()
    a.arm(aux, seed=0, total_steps=6, settings={"warmup": 5})
    for h, y in batches[:3]:
        a.last_seen += 1
        a.train_step(h, y)
    state = a.checkpoint()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    b = server()
    with pytest.raises(ConfigError, match="armed"):
        b.restore(state)  # a rebuilt server is armed again first (without the warm-up)
    b.arm(aux, seed=0, total_steps=6, settings={"warmup": 0})
    b.restore(state)
    b.last_seen = a.last_seen
    assert b.fsha.steps == a.fsha.steps == 3 and b.steps == 3
    for h, y in batches[3:]:
        a.last_seen += 1
        b.last_seen += 1
        ga, _ = a.train_step(h, y)
        gb, _ = b.train_step(h, y)
        np.testing.assert_array_equal(ga, gb)  # the same hijacking gradient, step for step
    assert b.fsha.steps == 6
    assert [p.step for p in b.attack_curve()] == [p.step for p in a.attack_curve()]
    for pa, pb in zip(a.attack_curve(), b.attack_curve(), strict=True):
        np.testing.assert_array_equal(pa.images, pb.images)
