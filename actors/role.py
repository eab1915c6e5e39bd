"""What every party on the wire has in common: an endpoint, a network, and a safe dispatcher."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from actors.wire import Network
from protocol.endpoint import Endpoint, Message, WireStats
from protocol.errors import CodecError, ShapeError, SplitWireError
from protocol.frame import MessageKind


class Role:
    """Base of DataOwner, ComputeServer, Eavesdropper: plain Python, no Ray.

    ``handle`` is the only entry point for bytes from the wire. Any frame that fails decoding or
    whose content the role rejects is dropped and counted by reason; the role keeps running.
    """

    #: How much this role's worker process lowers its CPU priority (a nice increment; 0: as
    #: its peers). A role off the critical path (the dealer, working a step ahead) yields the
    #: cores to the roles that wait on each other, round by round; an idle core still runs
    #: it at full speed. Read by the process that hosts the role (Ray's).
    cpu_nice: int = 0

    def __init__(self, name: str, codec: str, session: int, network: Network) -> None:
        self.name = name
        self.endpoint = Endpoint(name, codec, session)
        self.network = network

    # --- receiving -------------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> list[bytes]:
        replies: list[bytes] = []
        for data in frames:
            msg = self.endpoint.accept(data)
            if msg is None:
                continue
            try:
                if msg.kind == MessageKind.HANDSHAKE:
                    replies.extend(self.endpoint.handshake(msg))
                    continue
                replies.extend(self.on_message(msg))
            except Exception as exc:  # noqa: BLE001 - a bad frame is dropped and counted, by
                # type; a party never dies of what a peer sent (the sender sees no reply).
                self.endpoint.stats.dropped[type(exc).__name__] += 1
        return replies

    def on_message(self, msg: Message) -> list[bytes]:
        """Act on one valid message through the role's handler table; return reply frames.

        Kinds the table does not list are refused (dropped and counted by ``handle``).
        """
        handler = self.handlers().get(msg.kind)
        if handler is None:
            raise ShapeError(f"{self.name} does not accept {msg.kind.name} from {msg.sender}")
        return handler(msg)

    def handlers(self) -> dict[MessageKind, Callable[[Message], list[bytes]]]:
        """The message kinds this role accepts, each with its handler (Flower's client-app
        table): a new exchange is one entry here, not another branch."""
        return {}

    @staticmethod
    def require_owner(msg: Message) -> None:
        """Training and inference data may come only from data owners (no injected batches)."""
        if not msg.sender.startswith("owner:"):
            raise ShapeError(f"{msg.kind.name} from {msg.sender}, which is not a data owner")

    # --- sending ---------------------------------------------------------------------------
    def reply(self, to: str, kind: MessageKind, tensor: np.ndarray) -> bytes:
        return self.endpoint.encode(to, kind, tensor)

    def request(
        self, receiver: str, items: Iterable[tuple[MessageKind, np.ndarray]]
    ) -> list[Message]:
        """Send a burst of tensors to ``receiver`` and return its valid replies."""
        self.connect_to(receiver)
        frames = [self.endpoint.encode(receiver, kind, t) for kind, t in items]
        replies = self.network.exchange(receiver, frames)
        return [m for m in (self.endpoint.accept(r) for r in replies) if m is not None]

    def request_async(self, receiver: str,
                      items: Iterable[tuple[MessageKind, np.ndarray]]) -> tuple:
        """Like ``request``, but returns at once; ``complete`` waits for the replies."""
        self.connect_to(receiver)
        frames = [self.endpoint.encode(receiver, kind, t) for kind, t in items]
        return self.network.start_exchange(receiver, frames)

    def complete(self, pending: tuple) -> list[Message]:
        replies = self.network.finish_exchange(pending)
        return [m for m in (self.endpoint.accept(r) for r in replies) if m is not None]

    def connect_to(self, peer: str) -> None:
        """Run the codec's handshake with ``peer`` first, if its link needs one and has none."""
        offer = self.endpoint.handshake_offer(peer)
        if offer is None:
            return
        for reply in self.network.exchange(peer, [offer]):
            msg = self.endpoint.accept(reply)
            if msg is not None and msg.kind == MessageKind.HANDSHAKE:
                try:
                    self.endpoint.handshake(msg)
                except SplitWireError as exc:
                    self.endpoint.stats.dropped[type(exc).__name__] += 1
        if not self.endpoint.codec.link_ready(peer):
            raise CodecError(f"{self.name}: handshake with {peer} failed")

    # --- link set-up, codec-agnostic: the lab pins every party's public identity ------------
    def identity(self) -> bytes:
        return self.endpoint.identity()

    def identities(self) -> dict[str, bytes]:
        """Every name this party answers for, with its public identity (hosts have many)."""
        return {self.name: self.identity()}

    def trust(self, registry: dict[str, bytes]) -> None:
        self.endpoint.trust(registry)

    def forget(self, peers: list[str]) -> None:
        """These peers restarted (new identities, sequence numbers from 0): drop their links."""
        for peer in peers:
            self.endpoint.forget(peer)

    def expect(self, replies: list[Message], kind: MessageKind, sender: str) -> Message:
        """The single reply of ``kind`` from ``sender``, or a typed error naming what came."""
        found = [m for m in replies if m.kind == kind and m.sender == sender]
        if len(found) != 1:
            got = [m.kind.name for m in replies]
            raise ShapeError(f"{self.name} expected one {kind.name} from {sender}, got {got} "
                             "(a peer that drops a frame counts why in its wire stats)")
        return found[0]

    def wire_stats(self) -> WireStats:
        return self.endpoint.stats

    def flush_taps(self) -> None:
        """Wait until every frame this role sent has reached the taps (a transport may mirror
        in the background): the lab calls it on every role before the capture is read."""
        self.network.flush()


def yield_cpu(role: object) -> int:
    """Lower this process's CPU priority by the role's ``cpu_nice`` (for a process that hosts
    that role alone, as a Ray worker does); returns the process's niceness after."""
    increment = int(getattr(role, "cpu_nice", 0))
    return os.nice(increment) if increment > 0 else os.nice(0)
