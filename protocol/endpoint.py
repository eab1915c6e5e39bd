"""One party's attachment to the wire: frames out, validated messages in, everything counted.

An ``Endpoint`` is what every role (owner, server, eavesdropper, ...) uses to talk. It numbers
frames per link, hands payloads to the codec, and on the receiving side applies every check a
frame must pass before its tensor is trusted. A frame that fails is *dropped and counted*
(``accept``), never allowed to crash the party that received it. Frames and bytes are counted
where they are sent, per link, as CrypTen's ``Communicator`` does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from protocol.codecs import Codec, get_codec
from protocol.errors import CodecError, FrameError
from protocol.frame import (
    MAX_PAYLOAD,
    DType,
    FrameHeader,
    MessageKind,
    decode_frame,
    encode_header,
    numpy_dtype,
    tensor_view,
)

#: Replay windows a role keeps at most. Windows are made only for senders whose frame passed
#: every check, so on an authenticated link they are bounded by the trust registry; on a
#: plaintext link anyone can name a new sender, so this caps the memory such a flood costs
#: (about 200 bytes a window). Above --clients' limit of 10,000 owners plus the other roles.
MAX_PEERS = 16_384


class ReplayWindow:
    """Anti-replay window (as in IPsec/DTLS, RFC 4303 3.4.3): accept each sequence number at
    most once, and tolerate reordering within a window of ``size`` sequence numbers: the newest
    accepted one and the ``size - 1`` before it. A frame ``size`` or more behind is refused."""

    __slots__ = ("size", "top", "seen")

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.top = -1  # highest sequence number accepted so far
        self.seen = 0  # bit i set: sequence number top - i was accepted

    def check(self, seq: int, sender: str) -> None:
        if seq > self.top:
            return
        age = self.top - seq
        if age >= self.size:
            raise FrameError(f"sequence number {seq} from {sender} is outside the replay window "
                             f"(newest {self.top}, at most {self.size - 1} behind)")
        if self.seen >> age & 1:
            raise FrameError(f"replayed sequence number {seq} from {sender}")

    def update(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            # A jump past the window forgets it; shifting by the jump could allocate without bound.
            self.seen = 1 if shift >= self.size else ((self.seen << shift) | 1) & (
                (1 << self.size) - 1)
            self.top = seq
        else:
            self.seen |= 1 << (self.top - seq)


@dataclass(frozen=True)
class Message:
    """A frame that passed every check, with its tensor decoded."""

    sender: str
    receiver: str
    kind: MessageKind
    session: int
    seq: int
    tensor: np.ndarray


@dataclass
class WireStats:
    """Counters for one endpoint; merge several with ``+`` for a run's total."""

    frames_sent: Counter = field(default_factory=Counter)  # (sender, receiver) -> frames
    bytes_sent: Counter = field(default_factory=Counter)  # (sender, receiver) -> bytes
    frames_received: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def frames(self) -> int:
        return sum(self.frames_sent.values())

    @property
    def bytes(self) -> int:
        return sum(self.bytes_sent.values())

    def __add__(self, other: WireStats) -> WireStats:
        return WireStats(
            self.frames_sent + other.frames_sent,
            self.bytes_sent + other.bytes_sent,
            self.frames_received + other.frames_received,
            self.dropped + other.dropped,
        )

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "links": {
                f"{s}->{r}": {"frames": n, "bytes": self.bytes_sent[(s, r)]}
                for (s, r), n in sorted(self.frames_sent.items())
            },
            "dropped": dict(self.dropped),
        }


class Endpoint:
    """Encode outgoing tensors into frames and strictly validate incoming ones."""

    def __init__(
        self, name: str, codec: str | Codec, session: int, max_payload: int = MAX_PAYLOAD,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.name = name
        self.codec = get_codec(codec)(name, session) if isinstance(codec, str) else codec
        self.session = session
        self.max_payload = max_payload
        self.max_peers = max_peers
        self.stats = WireStats()
        self._next_seq: Counter = Counter()  # receiver -> next sequence number to send
        self._windows: dict[str, ReplayWindow] = {}  # sender -> anti-replay window

    def encode(self, receiver: str, kind: MessageKind, tensor: np.ndarray) -> bytearray:
        # NaN/inf are refused where it matters, at the receiver (a sender may be hostile);
        # checking here too would cost a second full pass over every tensor.
        dtype, shape, plain = tensor_view(tensor)
        seq = self._next_seq[receiver]
        header = FrameHeader(
            codec=self.codec.codec_id, kind=kind, dtype=dtype, shape=shape, sender=self.name,
            receiver=receiver, session=self.session, seq=seq,
            payload_len=self.codec.payload_len(kind, len(plain)),
        )
        header_bytes = encode_header(header, self.max_payload)
        # One buffer for the whole frame; the codec writes the payload straight into it.
        frame = bytearray(len(header_bytes) + header.payload_len)
        frame[:len(header_bytes)] = header_bytes
        self.codec.seal_into(header, header_bytes, plain, memoryview(frame)[len(header_bytes):])
        self._next_seq[receiver] = seq + 1
        self.stats.frames_sent[(self.name, receiver)] += 1
        self.stats.bytes_sent[(self.name, receiver)] += len(frame)
        return frame

    def decode(self, data: bytes) -> Message:
        """Validate and decode one frame addressed to this endpoint; raise FrameError if bad."""
        frame = decode_frame(data, self.max_payload)
        h = frame.header
        if h.receiver != self.name:
            raise FrameError(f"frame for {h.receiver!r} delivered to {self.name!r}")
        if h.sender == self.name:
            raise FrameError(f"frame claims to come from {self.name!r} itself")
        if h.codec != self.codec.codec_id:
            raise FrameError(f"frame uses codec id {h.codec}, this link speaks {self.codec.name}")
        if h.session != self.session:
            raise FrameError(f"frame from session {h.session:#x}, this is {self.session:#x}")
        # No window is made here: a sender gets one only once a frame of its passed every check
        # (authentication included), so forged sender names cost a keyed link no memory.
        window = self._windows.get(h.sender)
        if window is not None:
            window.check(h.seq, h.sender)
        elif len(self._windows) >= self.max_peers:
            raise FrameError(f"{self.name} already keeps replay windows for {self.max_peers} "
                             f"peers; refusing a new sender {h.sender!r}")
        if h.payload_len != self.codec.payload_len(h.kind, h.tensor_nbytes):
            # Checked before allocating: a forged shape must not make us reserve gigabytes.
            raise CodecError(f"{self.codec.name} payload of {h.payload_len} bytes cannot carry a "
                             f"{h.dtype.name} tensor of shape {h.shape}")
        tensor = np.empty(h.shape, numpy_dtype(h.dtype))
        self.codec.open_into(frame, memoryview(tensor.reshape(-1).view(np.uint8)))
        if tensor.dtype.kind == "f" and not np.all(np.isfinite(tensor)):
            raise FrameError(f"{h.kind.name} tensor from {h.sender} contains NaN/inf")
        # Only a frame that passed every check (authentication included) makes or moves a window.
        if window is None:
            window = self._windows[h.sender] = ReplayWindow()
        window.update(h.seq)
        self.stats.frames_received += 1
        return Message(h.sender, h.receiver, h.kind, h.session, h.seq, tensor)

    # --- link set-up: identities and handshakes (no-ops for codecs without keys) -------------
    def identity(self) -> bytes:
        return self.codec.identity()

    def trust(self, registry: dict[str, bytes]) -> None:
        self.codec.trust(registry)

    def forget(self, peer: str) -> None:
        """``peer`` restarted: its sequence numbers begin again and its link keys are gone.

        Resetting the replay window is safe only because the link also gets fresh keys (a new
        handshake): frames from before the restart no longer authenticate.
        """
        self.codec.forget(peer)
        self._next_seq.pop(peer, None)
        self._windows.pop(peer, None)

    def handshake_offer(self, peer: str) -> bytes | None:
        """The HANDSHAKE frame to send before the first data frame to ``peer``, if any."""
        body = self.codec.handshake_offer(peer)
        if body is None:
            return None
        return self.encode(peer, MessageKind.HANDSHAKE, np.frombuffer(body, np.uint8))

    def handshake(self, msg: Message) -> list[bytes]:
        """Process a received (already verified) HANDSHAKE; return the answer frame, if any."""
        answer = self.codec.on_handshake(msg.sender, msg.tensor.tobytes())
        if answer is None:
            return []
        return [self.encode(msg.sender, MessageKind.HANDSHAKE, np.frombuffer(answer, np.uint8))]

    def accept(self, data: bytes) -> Message | None:
        """``decode``, but a bad frame is dropped and counted instead of raised."""
        try:
            return self.decode(data)
        except Exception as exc:  # noqa: BLE001 - the wire boundary: nothing may crash a party
            self.stats.dropped[type(exc).__name__] += 1
            return None


__all__ = ["MAX_PEERS", "DType", "Endpoint", "Message", "MessageKind", "ReplayWindow",
           "WireStats"]
