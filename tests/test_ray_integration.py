"""The whole plaintext scenario on a real local Ray cluster, at small scale."""

from __future__ import annotations

import ipaddress
import json

import numpy as np
import psutil
import pytest

from actors.simulate import main
from tests.helpers import mlp_net

pytestmark = pytest.mark.ray


def ray_listening_addresses() -> set[str]:
    """Addresses that processes of this Ray session listen on (TCP)."""
    addrs = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if not any(k in cmd for k in ("gcs_server", "raylet", "ray::", "default_worker",
                                      "ray/_private", "dashboard")):
            continue
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        addrs.update(c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN)
    return addrs


def test_plaintext_attack_beats_chance_on_ray(ray_local, tmp_path):
    out = tmp_path / "out"
    code = main(["--protocol", "plaintext", "--adversary", "eavesdropper", "--epochs", "3",
                 "--attack-epochs", "6", "--aux-size", "1500", "--out", str(out), "--quiet",
                 "--capture", str(tmp_path / "w.cap")])
    assert code == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["target_accuracy"] >= 0.9
    # chance is 10%: the eavesdropper must recognisably rebuild most digits
    assert run["attack"]["validator_accuracy"] >= 0.6
    assert run["attack"]["ssim"] >= 0.4
    assert sum(run["wire"]["dropped"].values()) == 0
    assert set(run["placement"]) == {"owner:0", "owners:0", "server", "eavesdropper"}
    assert run["batches"]["sent"] == run["batches"]["applied"] > 0 and run["restarts"] == 0


def test_ray_binds_loopback_only(ray_local):
    addrs = ray_listening_addresses()
    assert addrs, "found no listening Ray process"
    loopback = [ipaddress.ip_address(a.split("%")[0]) for a in addrs]
    # "::ffff:127.0.0.1" is the IPv4-mapped form of loopback: still loopback.
    assert all(a.is_loopback or getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback
               for a in loopback), addrs


def test_actor_drops_bad_frames_and_keeps_running(ray_local):
    from actors.lab import SERVER
    from actors.owner import TrainConfig
    from actors.ray_backend import RayBackend
    from actors.server import ComputeServer
    from protocol.endpoint import Endpoint
    from protocol.frame import MessageKind

    backend = RayBackend()
    try:
        backend.start(SERVER, ComputeServer, codec="plaintext", session=9,
                      net=mlp_net(0), config=TrainConfig())
        backend.connect()
        actor = backend.actors[SERVER]
        owner = Endpoint("owner:0", "plaintext", 9)
        junk = [b"", b"SPWF" + b"\xff" * 40, owner.encode("server", MessageKind.LABELS,
                                                          np.array([42]))]
        assert ray_local.get(actor.handle.remote(junk)) == []
        replies = ray_local.get(actor.handle.remote([
            owner.encode("server", MessageKind.INFER_ACTIVATIONS, np.ones((3, 500), np.float32))
        ]))
        msg = owner.decode(replies[0])
        assert msg.kind == MessageKind.PREDICTIONS and msg.tensor.shape == (3, 10)
        stats = backend.call(SERVER, "wire_stats")
        assert sum(stats.dropped.values()) == 3
    finally:
        backend.shutdown()


@pytest.mark.parametrize("data_plane", ["ray", "sockets"])
def test_the_next_protocol_hosts_its_roles_in_the_workers_the_last_one_left(ray_local,
                                                                             data_plane):
    """actors.api's lanes: a backend hands its default workers to a RolePool at shutdown and
    the next backend's roles start in them (no new process), fresh roles that work; a worker
    whose priority was lowered (the dealer's) is ended instead. With the socket data plane
    the old role's listener is closed and the new role answers on a port of its own."""
    from actors.lab import DEALER, SERVER
    from actors.mpc_roles import Dealer
    from actors.owner import TrainConfig
    from actors.ray_backend import RayBackend, RolePool
    from actors.server import ComputeServer
    from actors.socket_plane import FrameClient, PeerGoneError
    from protocol.endpoint import Endpoint
    from protocol.frame import MessageKind

    pool = RolePool()
    first = RayBackend(pool=pool, data_plane=data_plane)
    try:
        first.start(SERVER, ComputeServer, codec="plaintext", session=9, net=mlp_net(0),
                    config=TrainConfig())
        first.start(DEALER, Dealer, codec="plaintext", session=9)
        first.connect()
        pids = {n: ray_local.get(a.pid.remote()) for n, a in first.actors.items()}
        old_address = ray_local.get(first.actors[SERVER].address.remote())
        first.call(SERVER, "wire_stats")
    finally:
        first.shutdown()
    assert len(pool.idle) == 1 and not first.actors  # the server's worker, not the dealer's
    second = RayBackend(pool=pool, data_plane=data_plane)
    try:
        second.start(SERVER, ComputeServer, codec="plaintext", session=11, net=mlp_net(1),
                     config=TrainConfig())
        second.connect()
        actor = second.actors[SERVER]
        assert ray_local.get(actor.pid.remote()) == pids[SERVER] and not pool.idle
        owner = Endpoint("owner:0", "plaintext", 11)  # the new role's session, not the old
        request = [owner.encode("server", MessageKind.INFER_ACTIVATIONS,
                                np.ones((2, 500), np.float32))]
        replies = ray_local.get(actor.handle.remote(request))
        assert owner.decode(replies[0]).tensor.shape == (2, 10)
        address = ray_local.get(actor.address.remote())
        assert (address is None) == (old_address is None) == (data_plane == "ray")
        if data_plane == "sockets":
            assert address != old_address
            client = FrameClient()
            client.set_addresses({"new": tuple(address), "old": tuple(old_address)})
            request = [owner.encode("server", MessageKind.INFER_ACTIVATIONS,  # no replay
                                    np.ones((3, 500), np.float32))]
            replies = client.exchange("new", request)
            assert owner.decode(bytes(replies[0])).tensor.shape == (3, 10)
            with pytest.raises(PeerGoneError):  # the old role's listener is gone
                client.exchange("old", request)
            client.close()
        assert sum(second.call(SERVER, "wire_stats").dropped.values()) == 0
    finally:
        second.shutdown()
    assert len(pool.idle) == 1
    pool.close()
    assert not pool.idle


def test_socket_data_plane_recovers_a_killed_server(ray_local, tmp_path):
    """Frames over the roles' own TCP connections (loopback): same training, same recovery."""
    out = tmp_path / "out"
    code = main(["--protocol", "encrypted", "--adversary", "server", "--epochs", "2",
                 "--attack-epochs", "5", "--aux-size", "1500", "--clients", "2",
                 "--data-plane", "sockets", "--chaos", "server@30", "--out", str(out),
                 "--quiet"])
    assert code == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["restarts"] == 1
    steps = 2 * sum(-(-o["train_examples"] // 64) for o in run["per_owner"])  # 2 epochs
    assert run["batches"]["sent"] == run["batches"]["applied"] == steps
    assert run["batches"]["retried"] >= 1
    assert run["target_accuracy"] >= 0.85  # two epochs
    assert run["attack"]["validator_accuracy"] >= 0.5  # the curious server still decrypts
