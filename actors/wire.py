"""The one network path every frame takes, and the small backend interface it runs over.

``Network.exchange`` sends a burst of frames to one party and returns that party's reply
frames; both directions are mirrored, as the exact bytes plus a capture timestamp, to every
tap (the eavesdropper). Delivery itself is a ``Transport``: ``LocalTransport`` calls parties
in this process (unit tests, benchmarks), ``actors.ray_backend.RayTransport`` calls Ray actors.
Roles only ever see ``Network``, so the same role code runs in-process and on a cluster, as
Flower keeps its ``ClientApp`` free of Ray behind a ``Backend``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

#: (capture time in seconds since the epoch, the frame's bytes exactly as sent)
TapRecord = tuple[float, bytes]


class Party(Protocol):
    """Anything that can be sent frames: returns the frames it sends back."""

    def handle(self, frames: list[bytes]) -> list[bytes]: ...


class Transport(ABC):
    """Moves bytes between named parties; knows nothing about frames."""

    @abstractmethod
    def deliver(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        """Hand ``frames`` to ``receiver`` and return its reply frames (synchronously)."""

    @abstractmethod
    def mirror(self, tap: str, records: list[TapRecord]) -> None:
        """Copy records to a tap; may be asynchronous until ``flush``."""

    def flush(self) -> None:  # noqa: B027 - optional hook: synchronous transports need none
        """Block until every mirrored record has reached its tap (nothing is lost)."""


class Network:
    """The wire as one party sees it: deliver, mirror to taps, keep order."""

    def __init__(self, owner: str, transport: Transport, taps: Sequence[str] = ()) -> None:
        self.owner = owner
        self.transport = transport
        # A tap never mirrors its own traffic to itself: it already holds those bytes.
        self.taps = [t for t in taps if t != owner]

    def exchange(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        sent_at = time.time()
        replies = self.transport.deliver(receiver, frames)
        replied_at = time.time()
        if self.taps:
            records = [(sent_at, f) for f in frames] + [(replied_at, f) for f in replies]
            for tap in self.taps:
                self.transport.mirror(tap, records)
        return replies

    def flush(self) -> None:
        self.transport.flush()


class LocalTransport(Transport):
    """In-process delivery: parties and taps are plain objects in a dict."""

    def __init__(self) -> None:
        self.parties: dict[str, Party] = {}
        self.tap_sinks: dict[str, Callable[[list[TapRecord]], None]] = {}

    def add_party(self, name: str, party: Party) -> None:
        self.parties[name] = party

    def add_tap(self, name: str, sink: Callable[[list[TapRecord]], None]) -> None:
        self.tap_sinks[name] = sink

    def deliver(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        try:
            party = self.parties[receiver]
        except KeyError:
            raise KeyError(f"no party named {receiver!r} on this network") from None
        return party.handle(list(frames))

    def mirror(self, tap: str, records: list[TapRecord]) -> None:
        self.tap_sinks[tap](records)
