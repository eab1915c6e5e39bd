"""The Ray layer: one thin actor per role, a transport over actor calls, and cluster start-up.

Everything that imports Ray lives here. The actor hosts a plain ``Role`` and forwards to it;
the role's ``Network`` delivers frames with ``ray.get(peer.handle.remote(frames))`` and mirrors
them to taps with fire-and-forget calls that ``flush`` waits for, so nothing is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# Ray reads this when it is imported, not when a cluster starts: set it first, so a local
# cluster binds loopback only (Ray binds the machine's public address by default).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from actors.backend import Backend, RoleFactory
from actors.wire import Network, TapRecord, Taps, Transport

#: Roles are latency-bound, not CPU-bound: a fraction of a CPU each lets many share 2 cores.
ROLE_CPUS = 0.25
#: Fire-and-forget tap calls allowed in flight before the sender waits for the oldest.
MAX_PENDING_TAPS = 64
#: Records (or bytes) mirrored to a tap in one call.
TAP_BATCH, TAP_BATCH_BYTES = 256, 4 << 20


def as_array(frame: bytes) -> np.ndarray:
    """A zero-copy uint8 view: Ray moves numpy buffers out of band (one copy into the object
    store, none out), where bytes objects are pickled; a 2 MB reply costs half the time."""
    return np.frombuffer(frame, np.uint8)


def as_arrays(frames: list[bytes]) -> list[np.ndarray]:
    return [as_array(f) for f in frames]


class RayTransport(Transport):
    def __init__(self) -> None:
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
        if self.pending:
            ray.get(self.pending)
            self.pending = []


@ray.remote
class RoleActor:
    """Hosts one role (DataOwner, ComputeServer, Eavesdropper, ...) in its own worker."""

    def __init__(self, name: str, factory: RoleFactory, taps: Taps,
                 kwargs: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)  # many roles share few cores; intra-op threads would thrash
        self.transport = RayTransport()
        self.role = factory(name, network=Network(name, self.transport, taps), **kwargs)

    def connect(self, directory: dict[str, Any]) -> None:
        self.transport.directory = dict(directory)

    def handle(self, frames: list[bytes]) -> list[bytes]:
        return as_arrays(self.role.handle(frames))

    def intercept(self, records: list[TapRecord]) -> int:
        return self.role.intercept(records)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.role, method)(*args, **kwargs)

    def node(self) -> str:
        ctx = ray.get_runtime_context()
        return f"{ctx.get_node_id()[:12]}"


class RayBackend(Backend):
    def __init__(self, role_cpus: float = ROLE_CPUS,
                 resources_for: Callable[[str], dict[str, float]] | None = None) -> None:
        self.role_cpus = role_cpus
        self.resources_for = resources_for or (lambda name: {})
        self.actors: dict[str, Any] = {}

    def start(self, name: str, factory: RoleFactory, taps: Taps = (),
              **kwargs: Any) -> None:
        options = {"num_cpus": self.role_cpus, "resources": self.resources_for(name)}
        taps = dict(taps) if isinstance(taps, Mapping) else list(taps)
        self.actors[name] = RoleActor.options(**options).remote(name, factory, taps, kwargs)

    def connect(self) -> None:
        ray.get([a.connect.remote(self.actors) for a in self.actors.values()])

    def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return ray.get(self.actors[name].call.remote(method, *args, **kwargs))

    def call_all(self, calls: Sequence[tuple[str, str, tuple]]) -> list[Any]:
        return ray.get([self.actors[n].call.remote(m, *a) for n, m, a in calls])

    def placement(self) -> dict[str, str]:
        names = list(self.actors)
        return dict(zip(names, ray.get([self.actors[n].node.remote() for n in names]),
                        strict=True))

    def shutdown(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()


def loopback_env() -> None:
    """Keep a local Ray cluster on 127.0.0.1 (Ray binds the public address by default)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def init_ray(address: str | None = None, num_cpus: int | None = None,
             object_store_mb: int = 512, quiet: bool = True) -> str:
    """Join ``address`` (or RAY_ADDRESS) if given, else start a loopback-only local cluster."""
    loopback_env()
    if ray.is_initialized():
        return "existing"
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"include_dashboard": False, "log_to_driver": not quiet,
              "logging_level": "ERROR" if quiet else "INFO"}
    if address:
        ray.init(address=address, **{k: v for k, v in common.items() if k != "include_dashboard"})
        return address
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2,
             object_store_memory=object_store_mb * 1024 * 1024,
             _node_ip_address="127.0.0.1", **common)
    return "local"
