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
from protocol.errors import FrameError, SplitWireError
from protocol.frame import (
    MAX_PAYLOAD,
    DType,
    FrameHeader,
    MessageKind,
    bytes_to_tensor,
    decode_frame,
    encode_header,
    tensor_to_bytes,
)


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
        self, name: str, codec: str | Codec, session: int, max_payload: int = MAX_PAYLOAD
    ) -> None:
        self.name = name
        self.codec = get_codec(codec)(name) if isinstance(codec, str) else codec
        self.session = session
        self.max_payload = max_payload
        self.stats = WireStats()
        self._next_seq: Counter = Counter()  # receiver -> next sequence number to send
        self._last_seen: dict[str, int] = {}  # sender -> highest sequence number accepted

    def encode(self, receiver: str, kind: MessageKind, tensor: np.ndarray) -> bytes:
        if tensor.dtype.kind == "f" and not np.all(np.isfinite(tensor)):
            # A NaN on the wire would silently poison the peer's model; refuse at the source.
            raise FrameError(f"refusing to send a {kind.name} tensor with NaN/inf values")
        dtype, shape, plain = tensor_to_bytes(tensor)
        seq = self._next_seq[receiver]
        header = FrameHeader(
            codec=self.codec.codec_id, kind=kind, dtype=dtype, shape=shape, sender=self.name,
            receiver=receiver, session=self.session, seq=seq,
            payload_len=self.codec.payload_len(len(plain)),
        )
        header_bytes = encode_header(header, self.max_payload)
        payload = self.codec.seal(header, header_bytes, plain)
        self._next_seq[receiver] = seq + 1
        frame = header_bytes + payload
        self.stats.frames_sent[(self.name, receiver)] += 1
        self.stats.bytes_sent[(self.name, receiver)] += len(frame)
        return frame

    def decode(self, data: bytes) -> Message:
        """Validate and decode one frame addressed to this endpoint; raise FrameError if bad."""
        frame = decode_frame(data, self.max_payload)
        h = frame.header
        if h.receiver != self.name:
            raise FrameError(f"frame for {h.receiver!r} delivered to {self.name!r}")
        if h.codec != self.codec.codec_id:
            raise FrameError(f"frame uses codec id {h.codec}, this link speaks {self.codec.name}")
        if h.session != self.session:
            raise FrameError(f"frame from session {h.session:#x}, this is {self.session:#x}")
        last = self._last_seen.get(h.sender, -1)
        if h.seq <= last:
            raise FrameError(f"stale sequence number {h.seq} from {h.sender} (last {last})")
        plain = self.codec.open(frame)
        tensor = bytes_to_tensor(plain, h.dtype, h.shape)
        if tensor.dtype.kind == "f" and not np.all(np.isfinite(tensor)):
            raise FrameError(f"{h.kind.name} tensor from {h.sender} contains NaN/inf")
        # Only a frame that passed every check advances the replay window.
        self._last_seen[h.sender] = h.seq
        self.stats.frames_received += 1
        return Message(h.sender, h.receiver, h.kind, h.session, h.seq, tensor)

    def accept(self, data: bytes) -> Message | None:
        """``decode``, but a bad frame is dropped and counted instead of raised."""
        try:
            return self.decode(data)
        except SplitWireError as exc:
            self.stats.dropped[type(exc).__name__] += 1
            return None


__all__ = ["DType", "Endpoint", "Message", "MessageKind", "WireStats"]
