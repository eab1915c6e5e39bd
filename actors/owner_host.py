"""Virtual owners: many data owners multiplexed over one process (one actor of the pool).

N owners must not mean N processes (an actor importing torch is ~460 MB). As Flower's
simulation engine runs many virtual clients on a bounded actor pool, an ``OwnerHost`` answers for
the owners assigned to it: frames are dispatched on their receiver field, and each owner keeps
its own endpoint (keys, sequence numbers) and shard. What an owner trains — the first part and
its momentum — is not kept here between turns: it arrives over the wire or from the lab's
checkpoint in the object store, and identical deployed parts are shared (``SharedWeights``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.backend import Method, method_name
from actors.owner import DataOwner, SharedWeights, TurnPlan, TurnReport
from actors.wire import Network, TapRecord, Transport
from protocol.endpoint import WireStats
from protocol.errors import ConfigError, FrameError
from protocol.frame import decode_header


@dataclass(frozen=True)
class OwnerSpec:
    """One virtual owner: its name and its private shards."""

    name: str
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


class _HostTransport(Transport):
    """Frames between owners of one host stay in the process (a Ray actor calling itself would
    wait for itself forever); everything else goes out on the host's transport."""

    def __init__(self, inner: Transport, host: OwnerHost) -> None:
        self.inner, self.host = inner, host

    def deliver(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        if receiver in self.host.owners:
            return self.host.handle(frames)
        return self.inner.deliver(receiver, frames)

    def deliver_async(self, receiver: str, frames: list[bytes]) -> object:
        if receiver in self.host.owners:
            return ("local", self.host.handle(frames))
        return ("remote", self.inner.deliver_async(receiver, frames))

    def collect(self, pending: object) -> list[bytes]:
        where, value = pending  # type: ignore[misc]
        return value if where == "local" else self.inner.collect(value)

    def mirror(self, tap: str, records: list[TapRecord]) -> None:
        self.inner.mirror(tap, records)

    def flush(self) -> None:
        self.inner.flush()


class OwnerHost:
    """Hosts the owners in ``owners``; the backend routes frames for any of them here."""

    def __init__(self, name: str, *, network: Network, owners: list[OwnerSpec],
                 owner_cls: Callable[..., DataOwner] = DataOwner, **common: Any) -> None:
        self.name = name
        self.shared = SharedWeights(common["net"])
        self.dropped: Counter[str] = Counter()  # frames for no owner of this host
        transport = _HostTransport(network.transport, self)
        self.owners: dict[str, DataOwner] = {}
        for spec in owners:
            self.owners[spec.name] = owner_cls(
                spec.name, network=Network(spec.name, transport, network.taps),
                train=spec.train, test=spec.test, shared=self.shared, **common)

    def parties(self) -> list[str]:
        """The names this host answers for on the wire."""
        return list(self.owners)

    def handle(self, frames: list[bytes]) -> list[bytes]:
        replies: list[bytes] = []
        by_owner: dict[str, list[bytes]] = {}
        for data in frames:
            try:
                receiver = decode_header(data).receiver
                by_owner.setdefault(receiver, []).append(data)
            except FrameError:
                self.dropped["FrameError"] += 1
        for receiver, batch in by_owner.items():
            owner = self.owners.get(receiver)
            if owner is None:  # addressed to nobody here: dropped and counted, like any bad frame
                self.dropped["FrameError"] += len(batch)
                continue
            replies.extend(owner.handle(batch))
        return replies

    def owner_call(self, owner: str, method: Method, *args: Any) -> Any:
        return getattr(self.owners[owner], method_name(method))(*args)

    def run_turns(self, turns: list[tuple[str, TurnPlan]],
                  state: np.ndarray | None) -> tuple[list[TurnReport], np.ndarray | None]:
        """Consecutive turns of owners hosted here, in one call; ``state`` (a checkpoint
        being restored) goes to the first. Returns the reports and the last state kept."""
        reports, kept = [], None
        for k, (owner, plan) in enumerate(turns):
            report, out = self.owners[owner].train_chunk(plan, state if k == 0 else None)
            reports.append(report)
            kept = out if out is not None else kept
        return reports, kept

    def check_states(self) -> dict[str, dict[str, np.ndarray]]:
        """Each hosted owner's defence state (the lab's checkpoint: detectors' evidence, random
        defences' generators); owners with none are left out."""
        states = {n: o.check_state() for n, o in self.owners.items()}
        return {n: s for n, s in states.items() if s}

    def load_check_states(self, states: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Every hosted owner's detectors back to ``check_states()``'s output."""
        unknown = sorted(set(states) - set(self.owners))
        if unknown:
            raise ConfigError(f"detector state for owners not hosted by {self.name}: "
                              f"{', '.join(unknown)}")
        for name, owner in self.owners.items():  # Defences decides who loads from nothing
            owner.load_check_state(states.get(name, {}))

    def each(self, method: Method, *args: Any) -> list[Any]:
        """``method`` on every hosted owner, in order (identities, trust, stats, ...)."""
        name = method_name(method)
        return [getattr(o, name)(*args) for o in self.owners.values()]

    def flush_taps(self) -> None:
        self.each(DataOwner.flush_taps)

    def wire_stats(self) -> WireStats:
        total = sum((o.wire_stats() for o in self.owners.values()), WireStats())
        for reason, n in self.dropped.items():
            total.dropped[reason] += n
        return total

    def identities(self) -> dict[str, bytes]:
        return {n: o.identity() for n, o in self.owners.items()}

    def trust(self, registry: Mapping[str, bytes]) -> None:
        self.each(DataOwner.trust, dict(registry))

    def forget(self, peers: list[str]) -> None:
        self.each(DataOwner.forget, peers)
