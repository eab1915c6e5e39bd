"""Many owners in one process: hosts, partitions, SplitFed, and exactly-once recovery."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actors.backend import LocalBackend
from actors.lab import RunConfig, run_protocol
from actors.owner import TrainConfig
from actors.owner_host import OwnerHost, OwnerSpec
from actors.wire import LocalTransport, Network
from protocol.endpoint import Endpoint
from protocol.errors import ConfigError
from protocol.frame import MessageKind
from tests.helpers import mlp_net, plaintext_server

BASE = RunConfig(protocol="plaintext", epochs=2, attack_epochs=1, seed=0, clients=3,
                 adversaries=("eavesdropper",), checkpoint_every=7, owner_actors=2,
                 train=TrainConfig(batch_size=128))


@pytest.fixture(scope="module")
def small(lab_setting):
    data, aux, judge = lab_setting
    return data, aux[:300], judge


def run(small, **changes):
    data, aux, judge = small
    backend = LocalBackend()
    (result,) = run_protocol(backend, dataclasses.replace(BASE, **changes), data, aux, judge)
    return result, backend


@pytest.fixture(scope="module")
def clean(small):
    return run(small)[0]


def test_host_routes_frames_to_its_owners_and_drops_strays():
    transport = LocalTransport()
    net = mlp_net(0)
    x, y = np.zeros((4, *net.input_shape), np.float32), np.zeros(4, np.int64)
    specs = [OwnerSpec(f"owner:{i}", (x, y), (x, y)) for i in range(3)]
    host = OwnerHost("owners:0", network=Network("owners:0", transport), owners=specs,
                     server="server", net=net, codec="plaintext", session=1,
                     config=TrainConfig())
    assert host.parties() == ["owner:0", "owner:1", "owner:2"]
    peer = Endpoint("owner:7", "plaintext", 1)
    flat = np.ones(net.owner_layout.state_size, np.float32)
    host.handle([peer.encode("owner:1", MessageKind.WEIGHTS, flat),
                 peer.encode("owner:9", MessageKind.WEIGHTS, flat), b"junk"])
    assert host.owners["owner:1"].inbox is not None
    assert host.owners["owner:0"].inbox is None and host.owners["owner:2"].inbox is None
    assert host.wire_stats().dropped["FrameError"] == 2  # not ours, and not a frame


def test_server_applies_a_retried_step_once():
    server = plaintext_server()
    owner = Endpoint("owner:0", "plaintext", 1)
    rng = np.random.default_rng(0)
    h, y = rng.random((8, 500), dtype=np.float32), rng.integers(0, 10, 8).astype(np.int64)

    def send(step):
        return server.handle([owner.encode("server", MessageKind.STEP, np.array([step])),
                              owner.encode("server", MessageKind.LABELS, y),
                              owner.encode("server", MessageKind.ACTIVATIONS, h)])

    first = [owner.decode(f).tensor for f in send(0)]
    again = [owner.decode(f).tensor for f in send(0)]
    assert server.counters() == {"applied": 1, "duplicates": 1}
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    send(1)
    assert server.counters()["applied"] == 2
    state = server.checkpoint()  # forgets replies: steps before a checkpoint never come back
    send(1)
    assert server.counters()["applied"] == 3
    server.restore(state)
    assert server.counters()["applied"] == 2


@pytest.mark.e2e
def test_many_owners_on_few_hosts_with_label_skew(small, clean):
    result, backend = run(small, clients=5, partition="dirichlet:0.5")
    assert len(backend.roles) == 2 + 2  # eavesdropper, server and two owner hosts
    assert result.to_json()["owners"] == 5 and result.owner_actors == 2
    sizes = [o["train_examples"] for o in result.per_owner]
    assert sum(sizes) == len(small[0].train.y) and len(set(sizes)) > 1  # skewed, disjoint
    assert result.batches["sent"] == result.batches["applied"] > 0
    assert result.target_accuracy > 0.8
    # the eavesdropper attacked every owner's inference traffic, image for image
    assert all(o["attack"] is not None and o["test_examples"] > 0 for o in result.per_owner)
    assert len(result.reconstructions) == len(small[0].test.y)


@pytest.mark.e2e
def test_server_killed_mid_run_recovers_exactly_once(small, clean):
    result, _ = run(small, chaos=("server@20",))
    assert result.restarts == 1
    assert result.batches["sent"] == result.batches["applied"] == clean.batches["sent"]
    assert 1 <= result.batches["retried"] <= BASE.checkpoint_every
    # Applying any batch twice (or losing one) would change every later loss.
    assert result.epoch_losses == pytest.approx(clean.epoch_losses, rel=1e-6)
    assert result.target_accuracy == pytest.approx(clean.target_accuracy, abs=0.002)


@pytest.mark.e2e
def test_owner_killed_mid_run_replays_from_the_servers_cache(small, clean):
    result, backend = run(small, chaos=("owner:1@30",))
    assert result.restarts == 1  # the host of owner:1 (and of owner:... sharing it)
    assert result.batches["sent"] == result.batches["applied"]
    assert result.batches["retried"] >= 1
    assert backend.party("server").duplicates >= 1  # answered from the cache, not re-applied
    assert result.epoch_losses == pytest.approx(clean.epoch_losses, rel=1e-6)


#: Two random defences: every owner draws its own noise and dropout masks at every step.
RANDOM_DEFENCES = ("dropout:rate=0.2", "noise:mechanism=laplace,scale=0.05,clip=200")


@pytest.fixture(scope="module")
def clean_with_noise(small):
    return run(small, defences=RANDOM_DEFENCES)[0]


@pytest.mark.e2e
@pytest.mark.parametrize("kill", ["server@20", "owner:1@30"])
def test_random_defences_draw_the_same_after_a_kill_and_rollback(small, clean_with_noise,
                                                                  kill):
    # The replayed steps must draw the noise and masks of their first try: the defences'
    # generators are in the checkpoint and go back with it (before, a rolled-back or rebuilt
    # owner drew on, and every later loss differed).
    result, _ = run(small, defences=RANDOM_DEFENCES, chaos=(kill,))
    assert result.restarts == 1 and result.batches["retried"] >= 1
    assert result.epoch_losses == clean_with_noise.epoch_losses  # bit for bit
    assert result.target_accuracy == clean_with_noise.target_accuracy


class Stop(Exception):
    pass


def stop_and_resume(small, cfg: RunConfig, stop_at: int):
    """Run ``cfg`` until its checkpoint after step ``stop_at``, then ``--resume`` it."""
    data, aux, judge = small

    def stop(step):
        if step >= stop_at:
            raise Stop

    with pytest.raises(Stop):
        run_protocol(LocalBackend(), cfg, data, aux, judge, on_checkpoint=stop)
    (resumed,) = run_protocol(LocalBackend(), dataclasses.replace(cfg, resume=cfg.checkpoint_dir),
                              data, aux, judge)
    return resumed


@pytest.mark.e2e
def test_random_defences_draw_the_same_after_a_resume(small, clean_with_noise, tmp_path):
    cfg = dataclasses.replace(BASE, defences=RANDOM_DEFENCES, checkpoint_dir=str(tmp_path))
    resumed = stop_and_resume(small, cfg, clean_with_noise.batches["sent"] // 2)
    assert resumed.epoch_losses == clean_with_noise.epoch_losses


@pytest.mark.e2e
def test_splitfed_averages_every_round(small):
    result, backend = run(small, schedule="splitfed")
    fed = backend.party("fed-server")
    assert fed.uploads == BASE.clients * BASE.epochs
    assert result.batches["sent"] == result.batches["applied"]
    assert result.target_accuracy > 0.6  # two averaged rounds; chance is 0.1


def test_fed_server_takes_the_example_weighted_mean():
    from actors.fedserver import FedServer

    fed = FedServer("fed-server", codec="plaintext", session=1,
                    network=Network("fed-server", LocalTransport()),
                    initial=np.zeros(4, np.float32))
    a, b = Endpoint("owner:0", "plaintext", 1), Endpoint("owner:1", "plaintext", 1)
    for ep, n, value in ((a, 1, 1.0), (b, 3, 5.0)):
        fed.handle([ep.encode("fed-server", MessageKind.CONTROL, np.array([n])),
                    ep.encode("fed-server", MessageKind.WEIGHTS, np.full(4, value, np.float32))])
    np.testing.assert_allclose(fed.close_round(), np.full(4, (1 * 1 + 3 * 5) / 4))
    (reply,) = fed.handle([a.encode("fed-server", MessageKind.MODEL_REQUEST, np.array([1]))])
    np.testing.assert_allclose(a.decode(reply).tensor, np.full(4, 4.0))
    spy = Endpoint("eavesdropper", "plaintext", 1)  # only owners upload
    fed.handle([spy.encode("fed-server", MessageKind.CONTROL, np.array([9]))])
    assert fed.wire_stats().dropped["ShapeError"] == 1


@pytest.mark.e2e
def test_resume_continues_a_stopped_run(small, clean, tmp_path):
    data, aux, judge = small
    cfg = dataclasses.replace(BASE, checkpoint_dir=str(tmp_path / "ck"))
    resumed = stop_and_resume(small, cfg, clean.batches["sent"] // 2)
    assert resumed.epoch_losses == pytest.approx(clean.epoch_losses, rel=1e-6)
    assert resumed.batches["sent"] == resumed.batches["applied"] == clean.batches["sent"]
    with pytest.raises(ConfigError, match="another run"):
        run_protocol(LocalBackend(), dataclasses.replace(cfg, resume=cfg.checkpoint_dir,
                                                         partition="dirichlet:1.0"),
                     data, aux, judge)
