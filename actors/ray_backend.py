"""The Ray layer: one thin actor per role, a transport over actor calls, and cluster start-up.

Everything that imports Ray lives here. The actor hosts a plain ``Role`` and forwards to it;
the role's ``Network`` delivers frames with ``ray.get(peer.handle.remote(frames))`` and mirrors
them to taps with fire-and-forget calls that ``flush`` waits for, so nothing is lost.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from actors.backend import Backend, Method, RoleFactory, method_name
from actors.faults import Crash, RoleDiedError, RunLostError
from actors.ray_env import prepare
from actors.role import yield_cpu
from actors.socket_plane import FrameClient, FrameServer, PeerGoneError
from actors.wire import Network, TapRecord, Taps, Transport
from protocol.errors import ConfigError

prepare()  # Ray reads its environment when imported

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

#: A training burst (activations of a batch of 128: 256 KB) and its gradient travel inside the
#: call's message instead of through the object store (Ray's default cut-off is 100 KB).
SYSTEM_CONFIG = {"max_direct_call_object_size": int(os.environ.get("SPLITWIRE_INLINE_BYTES",
                                                                   1 << 20))}
#: Roles are latency-bound, not CPU-bound: a fraction of a CPU each lets many share 2 cores.
ROLE_CPUS = 0.25
#: Fire-and-forget tap calls allowed in flight before the sender waits for the oldest.
MAX_PENDING_TAPS = 64
#: How long a shutting-down backend waits for its workers to retire into a pool.
RETIRE_TIMEOUT_S = 5.0
#: Records (or bytes) mirrored to a tap in one call.
TAP_BATCH, TAP_BATCH_BYTES = 256, 4 << 20


def as_array(frame: bytes) -> np.ndarray:
    """A zero-copy uint8 view: Ray moves numpy buffers out of band (one copy into the object
    store, none out), where bytes objects are pickled; a 2 MB reply costs half the time."""
    return np.frombuffer(frame, np.uint8)


def as_arrays(frames: list[bytes]) -> list[np.ndarray]:
    return [as_array(f) for f in frames]


class RayTransport(Transport):
    def __init__(self, plane: FrameClient | None = None) -> None:
        self.plane = plane  # --data-plane sockets: frames to peers go over TCP instead
        self.directory: dict[str, Any] = {}
        self.pending: list[ray.ObjectRef] = []
        self.buffers: dict[str, list[TapRecord]] = {}
        self.buffered: dict[str, int] = {}

    def _peer(self, name: str) -> Any:
        try:
            return self.directory[name]
        except KeyError:
            raise KeyError(f"no party named {name!r} on this network") from None

    def deliver(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        if self.plane is not None and self.plane.knows(receiver):
            try:
                return self.plane.exchange(receiver, frames)
            except PeerGoneError as exc:
                raise RoleDiedError(str(exc)) from None
        return ray.get(self._peer(receiver).handle.remote(as_arrays(frames)))

    def deliver_async(self, receiver: str, frames: list[bytes]) -> object:
        return self._peer(receiver).handle.remote(as_arrays(frames))

    def collect(self, pending: object) -> list[bytes]:
        return ray.get(pending)

    def mirror(self, tap: str, records: list[TapRecord]) -> None:
        # Batched: one call per many records keeps the tap from costing a call per exchange.
        buf = self.buffers.setdefault(tap, [])
        buf.extend((t, n, as_array(f)) for t, n, f in records)
        self.buffered[tap] = self.buffered.get(tap, 0) + sum(len(f) for _, _, f in records)
        if len(buf) >= TAP_BATCH or self.buffered[tap] >= TAP_BATCH_BYTES:
            self._send(tap)

    def _send(self, tap: str) -> None:
        records, self.buffers[tap], self.buffered[tap] = self.buffers[tap], [], 0
        if records:
            self.pending.append(self._peer(tap).intercept.remote(records))
        if len(self.pending) > MAX_PENDING_TAPS:
            # Back-pressure: never let a slow tap make us buffer without bound.
            done, self.pending = ray.wait(self.pending, num_returns=len(self.pending) // 2)
            ray.get(done)

    def flush(self) -> None:
        for tap in list(self.buffers):
            self._send(tap)
        pending, self.pending = self.pending, []
        if pending:
            ray.get(pending)  # a dead tap raises once; its lost copies are not retried


def _crash_exits(method: Callable) -> Callable:
    """A ``Crash`` (--chaos) kills this worker process for real; the backend rebuilds it.
    With a socket data plane the role has two doors (Ray calls, the frame server's threads):
    one lock makes them take turns, as a Ray actor's calls do."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with self.lock:
                return method(self, *args, **kwargs)
        except Crash:
            os._exit(1)
    return wrapper


@ray.remote
class RoleActor:
    """Hosts one role (DataOwner host, ComputeServer, Eavesdropper, ...) in its own worker."""

    def __init__(self, name: str, factory: RoleFactory, taps: Taps,
                 kwargs: dict[str, Any], data_plane: str = "ray") -> None:
        import torch

        torch.set_num_threads(1)  # many roles share few cores; intra-op threads would thrash
        # A worker handed on to another protocol's role (``become``) starts that role with the
        # global RNG as a fresh worker's: runs do not depend on which process hosts a role.
        self.fresh_rng = torch.get_rng_state()
        self.lock = threading.RLock()
        self._host(name, factory, taps, kwargs, data_plane)

    def _host(self, name: str, factory: RoleFactory, taps: Taps, kwargs: dict[str, Any],
              data_plane: str) -> None:
        sockets = data_plane == "sockets"
        self.transport = RayTransport(FrameClient() if sockets else None)
        self.role = factory(name, network=Network(name, self.transport, taps), **kwargs)
        yield_cpu(self.role)  # this worker process hosts only this role
        self.server = (FrameServer(ray.util.get_node_ip_address(), self._handle_socket)
                       if sockets else None)

    def retire(self) -> bool:
        """The run is over: drop the role and close its socket data plane (listener and
        connections: the next role listens on a port of its own). True if this worker can
        host another role (False where its priority was lowered: niceness only goes up)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.transport.plane is not None:
            self.transport.plane.close()
        reusable = int(getattr(self.role, "cpu_nice", 0)) == 0
        self.role = None
        return reusable

    def become(self, name: str, factory: RoleFactory, taps: Taps, kwargs: dict[str, Any],
               data_plane: str = "ray") -> None:
        """Host a new role in this (retired) worker, as a new actor would: torch is imported
        already, which is most of a worker's start-up (seconds of CPU on two cores)."""
        import torch

        torch.set_rng_state(self.fresh_rng)
        self._host(name, factory, taps, kwargs, data_plane)

    def _handle_socket(self, frames: list[bytes]) -> list[bytes]:
        try:
            with self.lock:
                return self.role.handle(frames)
        except Crash:
            os._exit(1)

    def address(self) -> tuple[str, int] | None:
        return None if self.server is None else tuple(self.server.address)

    def connect(self, directory: dict[str, Any],
                addresses: dict[str, tuple[str, int]] | None = None) -> None:
        self.transport.directory = dict(directory)
        if self.transport.plane is not None:
            self.transport.plane.set_addresses(addresses or {})

    def parties(self) -> list[str]:
        return self.role.parties() if hasattr(self.role, "parties") else []

    @_crash_exits
    def handle(self, frames: list[bytes]) -> list[bytes]:
        return as_arrays(self.role.handle(frames))

    @_crash_exits
    def intercept(self, records: list[TapRecord]) -> int:
        return self.role.intercept(records)

    @_crash_exits
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.role, method)(*args, **kwargs)

    @_crash_exits
    def call2(self, method: str, *args: Any) -> tuple[Any, Any]:
        """A method returning a pair, as two objects (see ``Backend.submit``)."""
        first, second = getattr(self.role, method)(*args)
        return first, second

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()[:12]

    def pid(self) -> int:
        """The worker process hosting the role (which roles shared a process, and when)."""
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def _died(exc: BaseException) -> bool:
    """Did this failure come from a dead actor (here, or inside the call it made)?"""
    if isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.NodeDiedError
                  | ray.exceptions.ObjectLostError | RoleDiedError):
        return True
    cause = getattr(exc, "cause", None)
    return isinstance(exc, ray.exceptions.RayTaskError) and cause is not None and _died(cause)


class RolePool:
    """Idle role workers that one protocol's backend hands on to the next in a lane
    (``actors.api``): a role started from the pool skips a worker's start-up (importing torch
    and the lab: ~3 s of CPU each on the 2-core AMD EPYC). Only workers started with the
    default placement and resources are kept; ``close`` ends the ones nobody took."""

    #: Pools open in this process: one per lane still running (``RayBackend.fit_sharers``).
    _open = 0
    _open_lock = threading.Lock()

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self._closed = False
        with RolePool._open_lock:
            RolePool._open += 1

    @classmethod
    def open_count(cls) -> int:
        with cls._open_lock:
            return cls._open

    def take(self) -> Any | None:
        return self.idle.pop() if self.idle else None

    def give(self, actor: Any) -> None:
        self.idle.append(actor)

    def close(self) -> None:
        for actor in self.idle:
            ray.kill(actor, no_restart=True)
        self.idle.clear()
        with RolePool._open_lock:
            if not self._closed:
                self._closed, RolePool._open = True, RolePool._open - 1


#: Role groups kept apart by --placement spread, in order of who gets a node first.
def _group(name: str) -> str:
    return "owners" if name.startswith("owners:") else name


class RayBackend(Backend):
    def __init__(self, role_cpus: float = ROLE_CPUS,
                 resources_for: Callable[[str], dict[str, float]] | None = None,
                 placement: str = "pack", revive_timeout_s: float = 60.0,
                 data_plane: str = "ray", pool: RolePool | None = None) -> None:
        self.data_plane = data_plane
        self.pool = pool  # workers to take roles from, and to hand them back to at shutdown
        self.pooled: set[str] = set()  # roles on default-placement workers (may go to the pool)
        self.role_cpus = role_cpus
        self.resources_for = resources_for or (lambda name: {})
        self.spread = placement == "spread"
        self.revive_timeout_s = revive_timeout_s
        self.actors: dict[str, Any] = {}
        self.specs: dict[str, tuple[RoleFactory, Taps, Any]] = {}
        self.nodes: dict[str, str] = {}  # role -> the node it runs on
        self.directory: dict[str, Any] = {}
        self._groups: dict[str, int] = {}

    def _strategy(self, name: str) -> Any:
        """--placement spread: each role group on its own alive node, round-robin, the
        driver's node first. Soft affinity: a restarted role may land on another node when
        its own is gone, so a run survives losing a node."""
        if not self.spread:
            return "DEFAULT"
        here = ray.get_runtime_context().get_node_id()
        nodes = sorted((n["NodeID"] for n in ray.nodes() if n["Alive"]),
                       key=lambda n: (n != here, n))
        index = self._groups.setdefault(_group(name), len(self._groups))
        if _group(name) == "owners":  # hosts take turns over the nodes after the others
            index = len(self._groups) - 1 + int(name.split(":")[1])
        return NodeAffinitySchedulingStrategy(nodes[index % len(nodes)], soft=True)

    def start(self, name: str, factory: RoleFactory, taps: Taps = (),
              **kwargs: Any) -> None:
        taps = dict(taps) if isinstance(taps, Mapping) else list(taps)
        # Kept for the run: a dead role is rebuilt from these same arguments.
        self.specs[name] = (factory, taps, ray.put(kwargs))
        self._create(name)

    def _create(self, name: str) -> None:
        factory, taps, kwargs = self.specs[name]
        resources = self.resources_for(name)
        if self.pool is not None and not resources and not self.spread:
            self.pooled.add(name)
            while (actor := self.pool.take()) is not None:
                try:
                    ray.get(actor.become.remote(name, factory, taps, kwargs, self.data_plane))
                except ray.exceptions.RayActorError:
                    continue  # gone while idle: try the next, or start a new one
                self.actors[name] = actor
                return
        options = {"num_cpus": self.role_cpus, "resources": resources,
                   "scheduling_strategy": self._strategy(name)}
        self.actors[name] = RoleActor.options(**options).remote(name, factory, taps, kwargs,
                                                                self.data_plane)

    def connect(self) -> None:
        names = list(self.actors)
        parties = self._get([self.actors[n].parties.remote() for n in names])
        self.directory = {n: self.actors[n] for n in names}
        for name, hosted in zip(names, parties, strict=True):
            self.directory.update(dict.fromkeys(hosted, self.actors[name]))
        addresses: dict[str, tuple[str, int]] = {}
        for name, hosted, where in zip(names, parties, self._get(
                [self.actors[n].address.remote() for n in names]), strict=True):
            if where is not None:
                addresses.update(dict.fromkeys([name, *hosted], tuple(where)))
        self._get([a.connect.remote(self.directory, addresses)
                   for a in self.actors.values()])
        self.nodes = dict(zip(names, self._get([self.actors[n].node_id.remote()
                                                for n in names]), strict=True))

    @staticmethod
    def _get(refs: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(refs, timeout=timeout)
        except Exception as exc:
            if _died(exc):
                raise RoleDiedError(str(exc).splitlines()[0]) from None
            raise

    def call(self, name: str, method: Method, *args: Any, **kwargs: Any) -> Any:
        return self._get(self.actors[name].call.remote(method_name(method), *args, **kwargs))

    def call_all(self, calls: Sequence[tuple[str, Method, tuple]]) -> list[Any]:
        return self._get([self.actors[n].call.remote(method_name(m), *a) for n, m, a in calls])

    def fit_sharers(self, fits: int) -> int:
        # Every lane still running (each has its pool open) may be training or fitting on the
        # same cores; once the others are done, the last lane's fit gets the node.
        return max(1, RolePool.open_count()) * max(1, fits)

    def submit(self, name: str, method: Method, *args: Any, returns: int = 1) -> Any:
        actor = self.actors[name]
        if returns == 2:
            return list(actor.call2.options(num_returns=2).remote(method_name(method), *args))
        return actor.call.remote(method_name(method), *args)

    def fetch(self, handles: Any) -> Any:
        return self._get(handles)

    def put(self, value: Any) -> Any:
        return ray.put(value)

    def keep(self, handle: Any, producer: str) -> Any:
        # A task's result lives on the node that computed it and dies with it; a copy put by
        # the lab lives on the lab's node, owned by the lab. Made on the lab's node already:
        # nothing to copy (the lab owns it, and that node's store outlives the worker).
        if self.nodes.get(producer) == ray.get_runtime_context().get_node_id():
            return handle
        return ray.put(self._get(handle))

    def revive(self) -> list[str]:
        """Rebuild every role whose actor died (from its start-up arguments, on a node that
        is alive: a lost node's roles move) and reconnect everyone; ``RunLostError`` if a
        role cannot be placed again within the timeout."""
        dead = []
        for name, actor in self.actors.items():
            try:
                ray.get(actor.parties.remote(), timeout=self.revive_timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(name)
        for name in dead:
            ray.kill(self.actors[name], no_restart=True)
            self._create(name)
        try:
            ray.get([self.actors[n].parties.remote() for n in dead],
                    timeout=self.revive_timeout_s)
            self.connect()
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise RunLostError(f"could not bring back {', '.join(dead)}: "
                               f"{str(exc).splitlines()[0]}") from None
        return dead

    def pool_size(self) -> int:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def placement(self) -> dict[str, str]:
        names = list(self.actors)
        nodes = ray.get([self.actors[n].node.remote() for n in names])
        out = dict(zip(names, nodes, strict=True))
        for party, actor in self.directory.items():  # hosted owners run where their host does
            host = next(n for n, a in self.actors.items() if a is actor)
            out.setdefault(party, out[host])
        return out

    def shutdown(self) -> None:
        """End every role; with a pool, hand the workers that can host another role to it
        (those that answer within ``RETIRE_TIMEOUT_S``: one still busy in a failed run's call
        is ended, as every worker was before pools)."""
        actors, self.actors = self.actors, {}
        retired = {a.retire.remote(): n for n, a in actors.items()
                   if self.pool is not None and n in self.pooled}
        done = ray.wait(list(retired), num_returns=len(retired),
                        timeout=RETIRE_TIMEOUT_S)[0] if retired else []
        reusable = set()
        for ref in done:
            try:
                if ray.get(ref):
                    reusable.add(retired[ref])
            except ray.exceptions.RayError:
                pass  # died meanwhile: nothing to keep
        for name, actor in actors.items():
            if name in reusable and self.pool is not None:
                self.pool.give(actor)
            else:
                ray.kill(actor, no_restart=True)


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_mb: int = 512, quiet: bool = True) -> str:
    """Join ``address`` (or RAY_ADDRESS) if given, else start a loopback-only local cluster."""
    prepare()
    if ray.is_initialized():
        return "existing"
    # A call that fails because a role died leaves its other results unfetched; the run
    # handles the failure itself (recovery), so Ray need not print each as "unhandled".
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"include_dashboard": False, "log_to_driver": not quiet,
              "logging_level": "ERROR" if quiet else "INFO"}
    if address:
        try:
            ray.init(address=address,
                     **{k: v for k, v in common.items() if k != "include_dashboard"})
        except ConnectionError as exc:
            raise ConfigError(f"--address {address}: cannot join that Ray cluster "
                              f"({str(exc).splitlines()[0]})") from None
        return address
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2,
             object_store_memory=object_store_mb * 1024 * 1024,
             _node_ip_address="127.0.0.1", _system_config=SYSTEM_CONFIG, **common)
    return "local"
