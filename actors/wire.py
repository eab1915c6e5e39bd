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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: (capture time in seconds since the epoch, the frame's length on the wire, the bytes the
#: tap kept: the whole frame, or its first ``snaplen`` bytes)
TapRecord = tuple[float, int, bytes]


class Party(Protocol):
    """Anything that can be sent frames: returns the frames it sends back."""

    def handle(self, frames: list[bytes]) -> list[bytes]: ...


class Transport(ABC):
    """Moves bytes between named parties; knows nothing about frames."""

    @abstractmethod
    def deliver(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        """Hand ``frames`` to ``receiver`` and return its reply frames (synchronously)."""

    def deliver_async(self, receiver: str, frames: list[bytes]) -> object:
        """Start a delivery; ``collect`` returns the replies. Default: deliver now."""
        return self.deliver(receiver, frames)

    def collect(self, pending: object) -> list[bytes]:
        return pending  # type: ignore[return-value]

    @abstractmethod
    def mirror(self, tap: str, records: list[TapRecord]) -> None:
        """Copy records to a tap; may be asynchronous until ``flush``."""

    def flush(self) -> None:  # noqa: B027 - optional hook: synchronous transports need none
        """Block until every mirrored record has reached its tap (nothing is lost)."""


#: Which links a tap sees: None for every link, else a set of {party, party} pairs.
LinkSet = frozenset[frozenset[str]] | None


@dataclass(frozen=True)
class Tap:
    """A sniffer's settings, as tcpdump's: which links, and how much of each frame it keeps.

    With ``snaplen`` > 0 a frame longer than that is kept as its first ``snaplen`` bytes (the
    header and then some) unless its kind is in ``full_kinds``; 0 keeps every byte. Applying it
    where the frame is mirrored saves moving bytes the sniffer would throw away.
    """

    links: LinkSet = None
    snaplen: int = 0
    full_kinds: frozenset[int] = frozenset()

    def keep(self, frame: bytes) -> bytes:
        if not self.snaplen or len(frame) <= self.snaplen or frame[6] in self.full_kinds:
            return frame  # byte 6 of a frame is its message kind
        return bytes(frame[: self.snaplen])


Taps = Mapping[str, Tap | None] | Sequence[str]


def link(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


class Network:
    """The wire as one party sees it: deliver, mirror to taps, keep order."""

    def __init__(self, owner: str, transport: Transport, taps: Taps = ()) -> None:
        self.owner = owner
        self.transport = transport
        tap_map = taps if isinstance(taps, Mapping) else dict.fromkeys(taps)
        # A tap never mirrors its own traffic to itself: it already holds those bytes.
        self.taps: dict[str, Tap] = {t: s or Tap() for t, s in tap_map.items() if t != owner}

    def exchange(self, receiver: str, frames: list[bytes]) -> list[bytes]:
        sent_at = time.time()
        replies = self.transport.deliver(receiver, frames)
        self._mirror(receiver, frames, sent_at, replies, time.time())
        return replies

    def start_exchange(self, receiver: str, frames: list[bytes]) -> tuple:
        """Send now, collect the replies later with ``finish_exchange`` (overlap with work)."""
        return (receiver, frames, time.time(), self.transport.deliver_async(receiver, frames))

    def finish_exchange(self, pending: tuple) -> list[bytes]:
        receiver, frames, sent_at, handle = pending
        replies = self.transport.collect(handle)
        self._mirror(receiver, frames, sent_at, replies, time.time())
        return replies

    def _mirror(self, receiver: str, frames: list[bytes], sent_at: float,
                replies: list[bytes], replied_at: float) -> None:
        here = link(self.owner, receiver)
        for name, tap in self.taps.items():
            if tap.links is None or here in tap.links:
                self.transport.mirror(name, [(sent_at, len(f), tap.keep(f)) for f in frames]
                                      + [(replied_at, len(f), tap.keep(f)) for f in replies])

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
