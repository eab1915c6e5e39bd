"""Codec registry: how a tensor's bytes become a frame payload, and back.

A codec is chosen by name (``--protocol``); new codecs register themselves with
``@register_codec`` and the actors never name one directly, so adding ``encrypted`` or
``secret-shared`` touches only ``protocol/``. Codec instances are per endpoint because a real
codec keeps per-link state (keys, counters); the plaintext codec has none.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from protocol.errors import CodecError, FrameError
from protocol.frame import Frame, FrameHeader, MessageKind, register_codec_id


class Codec(ABC):
    """Turns plaintext tensor bytes into a payload for one link, and back.

    ``seal`` runs at the sender, ``open`` at the receiver; both see the encoded header so an
    authenticated codec can bind it as associated data. Codecs that key their links implement
    the identity/trust/handshake hooks; the defaults describe a codec that needs none.
    """

    name: ClassVar[str]
    codec_id: ClassVar[int]
    description: ClassVar[str]
    #: Who computes the server part: "split" (one server, on what it receives) or "mpc" (two
    #: servers on additive shares, with a dealer). The lab picks its roles from this.
    topology: ClassVar[str] = "split"
    #: Hidden codecs are selectable only through a flag, not as a ``--protocol`` name.
    hidden: ClassVar[bool] = False

    def __init__(self, local: str, session: int = 0) -> None:
        self.local = local
        self.session = session

    @abstractmethod
    def payload_len(self, kind: MessageKind, plaintext_len: int) -> int:
        """Length of the payload that ``seal`` produces for ``plaintext_len`` bytes."""

    # --- link set-up hooks (no-ops for codecs without keys) ----------------------------------
    def identity(self) -> bytes:
        """This party's public identity for the trust registry (empty: none needed)."""
        return b""

    def trust(self, registry: Mapping[str, bytes]) -> None:
        """Pin the peers' public identities (name -> public key)."""
        return None

    def link_ready(self, peer: str) -> bool:
        """Whether frames to ``peer`` can be sealed now."""
        return True

    def forget(self, peer: str) -> None:  # noqa: B027 - codecs without link state keep none
        """Drop every bit of link state with ``peer`` (it restarted with a new identity)."""

    def handshake_offer(self, peer: str) -> bytes | None:
        """Body of a HANDSHAKE frame to send before talking to ``peer``; None if not needed."""
        return None

    def on_handshake(self, peer: str, body: bytes) -> bytes | None:
        """Process a verified handshake body from ``peer``; return the answer body, if any."""
        raise CodecError(f"codec {self.name!r} does not use handshakes")

    @abstractmethod
    def seal_into(self, header: FrameHeader, header_bytes: bytes, plaintext: memoryview,
                  out: memoryview) -> None:
        """Write the payload for ``plaintext`` into ``out`` (exactly ``payload_len`` bytes).

        Writing into the frame's own buffer, rather than returning new bytes, keeps a 1 MiB
        tensor from being copied three times on its way to the wire.
        """

    @abstractmethod
    def open_into(self, frame: Frame, out: memoryview) -> None:
        """Write ``frame``'s plaintext tensor bytes into ``out`` (exactly the tensor's size);
        raise CodecError if the payload is refused."""


_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec selectable by name and decodable by id."""
    for other in _REGISTRY.values():
        if other.codec_id == cls.codec_id and other is not cls:
            raise ValueError(f"codec id {cls.codec_id} is taken by {other.name!r}")
    _REGISTRY[cls.name] = cls
    register_codec_id(cls.codec_id)  # the frame decoder refuses ids nobody registered
    return cls


def codec_names(include_hidden: bool = False) -> list[str]:
    return [n for n, c in _REGISTRY.items() if include_hidden or not c.hidden]


def get_codec(name: str) -> type[Codec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown codec {name!r}; choices: {', '.join(codec_names(include_hidden=True))}"
        ) from None


def codec_by_id(codec_id: int) -> type[Codec]:
    for cls in _REGISTRY.values():
        if cls.codec_id == codec_id:
            return cls
    raise FrameError(f"unknown codec id {codec_id}")


@register_codec
class PlaintextCodec(Codec):
    """No protection: the payload is the tensor's raw little-endian bytes."""

    name = "plaintext"
    codec_id = 0
    description = "raw little-endian tensor bytes; anyone on the wire reads them"

    def payload_len(self, kind: MessageKind, plaintext_len: int) -> int:
        return plaintext_len

    def seal_into(self, header: FrameHeader, header_bytes: bytes, plaintext: memoryview,
                  out: memoryview) -> None:
        out[:] = plaintext

    def open_into(self, frame: Frame, out: memoryview) -> None:
        if len(frame.payload) != frame.header.tensor_nbytes:
            raise CodecError(
                f"plaintext payload is {len(frame.payload)} bytes, "
                f"header's tensor needs {frame.header.tensor_nbytes}"
            )
        out[:] = frame.payload


@register_codec
class SecretSharedPlaintextCodec(PlaintextCodec):
    """The secret-shared protocol with channel encryption off (``--no-channel-encryption``):
    shares cross the wire in the clear, to show what a tap on one or on every link learns."""

    name = "secret-shared/plaintext-links"
    codec_id = 3
    description = "additive shares to two servers, links NOT encrypted"
    topology = "mpc"
    hidden = True
