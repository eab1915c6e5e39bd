"""Multi-node runs on a real local Ray cluster (three nodes on loopback): placement, an
end-to-end run across nodes, losing a node mid-run, and joining a ``ray start --head`` cluster.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from actors.faults import RunLostError
from actors.lab import SERVER, RunConfig, run_protocol
from actors.owner import TrainConfig
from tests.test_ray_integration import ray_listening_addresses

pytestmark = pytest.mark.cluster

NODES = 3
CFG = RunConfig(protocol="plaintext", epochs=2, attack_epochs=3, seed=0, clients=3,
                owner_actors=2, adversaries=("eavesdropper",), checkpoint_every=10,
                train=TrainConfig(batch_size=128))


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from actors.ray_env import prepare

    prepare()
    if ray.is_initialized():  # the single-node test cluster, if it is up
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"node0": 1}, "node_ip_address": "127.0.0.1",
        "include_dashboard": False})
    for i in range(1, NODES):
        nodes.add_node(num_cpus=2, resources={f"node{i}": 1}, node_ip_address="127.0.0.1")
    ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def setting(lab_setting):
    data, aux, judge = lab_setting
    return data, aux[:1500], judge


def node_of(cluster, short_id: str):
    return next(n for n in cluster.worker_nodes if n.node_id.startswith(short_id))


def run_on(cluster, setting, cfg=CFG, on_checkpoint=None, **backend_args):
    from actors.ray_backend import RayBackend

    data, aux, judge = setting
    backend = RayBackend(placement="spread", **backend_args)
    try:
        (result,) = run_protocol(backend, cfg, data, aux, judge, on_checkpoint=on_checkpoint)
    finally:
        backend.shutdown()
    return result


def test_spread_places_roles_on_distinct_nodes_and_trains_across_them(cluster, setting):
    import ray

    result = run_on(cluster, setting)
    where = result.placement
    alive = {n["NodeID"][:12] for n in ray.nodes() if n["Alive"]}
    assert set(where.values()) <= alive
    # eavesdropper, server and the owners' first host each on a node of their own
    assert len({where["eavesdropper"], where[SERVER], where["owners:0"]}) == 3
    assert where["owner:0"] == where["owners:0"]  # a hosted owner runs where its host does
    assert result.target_accuracy >= 0.85
    assert result.attack.validator_accuracy >= 0.5
    assert result.batches["sent"] == result.batches["applied"] > 0
    assert sum(result.wire.dropped.values()) == 0
    # every process of the three nodes listens on loopback only
    addrs = [ipaddress.ip_address(a.split("%")[0]) for a in ray_listening_addresses()]
    assert addrs and all(a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None
                                           and a.ipv4_mapped.is_loopback) for a in addrs), addrs


def test_losing_a_node_mid_run_moves_its_roles_and_finishes(cluster, setting):
    import ray

    removed = []

    def remove_the_servers_node(step: int) -> None:
        if removed:
            return
        here = ray.get_runtime_context().get_node_id()
        server_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"]
                           and n["NodeID"] != here and n["Resources"].get("node1"))
        node = node_of(cluster, server_node[:12])
        removed.append(node)
        cluster.remove_node(node)

    result = run_on(cluster, setting, on_checkpoint=remove_the_servers_node)
    assert removed and result.restarts >= 1
    assert result.batches["sent"] == result.batches["applied"]
    assert result.batches["retried"] >= 0
    assert result.target_accuracy >= 0.85
    assert removed[0].node_id[:12] not in result.placement.values()
    cluster.add_node(num_cpus=2, resources={"node1": 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()


def test_a_role_pinned_to_a_lost_node_stops_with_a_checkpoint_to_resume(cluster, setting,
                                                                         tmp_path):
    import ray

    ckpt = tmp_path / "checkpoint"
    cfg = dataclasses.replace(CFG, checkpoint_dir=str(ckpt))
    pinned = "node2"
    done = []

    def remove_pinned_node(step: int) -> None:
        if done or step < 20:
            return
        node_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"]
                       and n["Resources"].get(pinned))
        done.append(node_id)
        cluster.remove_node(node_of(cluster, node_id[:12]))

    with pytest.raises(RunLostError, match="--resume"):
        run_on(cluster, setting, cfg, on_checkpoint=remove_pinned_node,
               resources_for=lambda name: {pinned: 0.01} if name == SERVER else {},
               revive_timeout_s=5)
    assert (ckpt / "checkpoint.json").is_file()
    stopped_at = json.loads((ckpt / "checkpoint.json").read_text())["position"]["step"]
    resumed = run_on(cluster, setting, dataclasses.replace(cfg, resume=str(ckpt)))
    assert resumed.batches["sent"] == resumed.batches["applied"] > stopped_at
    assert resumed.target_accuracy >= 0.85
    cluster.add_node(num_cpus=2, resources={pinned: 1}, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env() -> dict[str, str]:
    """A shell's environment: none of the Ray settings this test process picked up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture()
def head_started_with_ray_start(cluster):
    """``ray start --head --block`` on loopback, as a user would start a cluster; stopped by
    its PID (it takes the processes it started with it)."""
    import ray

    ray.shutdown()  # the driver leaves the test cluster; the CLI below is its own driver
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable))
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="swray", dir="/tmp")  # socket paths must stay short
    env = user_env()
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("ray start --head did not come up")
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")


def test_cli_joins_a_cluster_started_with_ray_start(head_started_with_ray_start, tmp_path):
    """The default command's shape at small scale on a cluster a user started: every protocol,
    the secret-shared one in a lane beside plaintext then encrypted (actors.api.protocol_lanes),
    each protocol on roles of its own."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "actors.simulate", "--address", head_started_with_ray_start,
         "--adversary", "server", "--epochs", "1", "--train-size", "600", "--batch-size", "16",
         "--attack-epochs", "2", "--aux-size", "400", "--clients", "2", "--out", str(out),
         "--quiet"],
        capture_output=True, text=True, timeout=300,
        env=user_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {r["protocol"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert list(runs) == ["plaintext", "encrypted", "secret-shared"]  # the report keeps order
    for run in runs.values():
        assert run["owners"] == 2 and run["batches"]["sent"] == run["batches"]["applied"] > 0
        assert sum(run["wire"]["dropped"].values()) == 0 and run["target_accuracy"] > 0.3
    assert Path(out / "checkpoint-plaintext" / "checkpoint.json").is_file()
    span = {p: (r["started_s"], r["started_s"] + r["seconds"]) for p, r in runs.items()}
    assert span["plaintext"][1] <= span["encrypted"][0]  # one lane: one after the other
    shared, plain = span["secret-shared"], span["plaintext"]
    assert shared[0] < plain[1] and plain[0] < shared[1]  # the other lane, at the same time
    # The encrypted server trained the same first part: it got the plaintext server's fit.
    assert runs["encrypted"]["fit"] == {**runs["plaintext"]["fit"], "shared": True}
    assert runs["secret-shared"]["fit"]["digest"] != runs["plaintext"]["fit"]["digest"]
