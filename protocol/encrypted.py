"""The ``encrypted`` codec: authenticated AES-256-GCM links keyed by a signed X25519 handshake.

Every frame's payload is ``AES-GCM(key[direction], nonce(direction, seq), tensor bytes,
associated data = the whole frame header)``, so a change to any bit of the frame — header or
payload — fails authentication, and a frame sealed for one link does not open on another.
HANDSHAKE frames carry ``type | ephemeral X25519 key`` in the clear plus an Ed25519 signature
over the handshake transcript *and the frame header*, so they cannot be altered either.
Replay and reordering are refused by the endpoint's anti-replay window before a payload is opened.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.exceptions import InvalidTag

from protocol.codecs import Codec, register_codec
from protocol.crypto import (
    ANSWER,
    HANDSHAKE_LEN,
    KEY_LEN,
    OFFER,
    SIG_LEN,
    Identity,
    LinkKeys,
    derive_link,
    exchange,
    new_ephemeral,
    nonce,
    transcript,
    verify,
)
from protocol.errors import CodecError
from protocol.frame import Frame, FrameHeader, MessageKind

TAG_LEN = 16
BODY_LEN = HANDSHAKE_LEN - SIG_LEN  # type tag + ephemeral public key


@register_codec
class EncryptedCodec(Codec):
    name = "encrypted"
    codec_id = 1
    description = "AES-256-GCM per link, keys from a signed X25519 handshake (Ed25519 identities)"

    def __init__(self, local: str, session: int = 0) -> None:
        super().__init__(local, session)
        self._identity = Identity()
        self._trusted: dict[str, bytes] = {}
        self._links: dict[str, LinkKeys] = {}
        self._offered: dict[str, tuple[object, bytes]] = {}  # peer -> (ephemeral key, public)
        self._answered: dict[str, bytes] = {}  # peer -> its ephemeral public (for our answer)

    # --- identities and handshake ------------------------------------------------------------
    def identity(self) -> bytes:
        return self._identity.public

    def trust(self, registry: Mapping[str, bytes]) -> None:
        for name, key in registry.items():
            if len(key) != KEY_LEN:
                raise CodecError(f"trust registry entry for {name!r} is not an Ed25519 key")
        self._trusted = {n: bytes(k) for n, k in registry.items()}

    def _peer_identity(self, peer: str) -> bytes:
        try:
            return self._trusted[peer]
        except KeyError:
            raise CodecError(f"unknown identity {peer!r}: not in the trust registry") from None

    def link_ready(self, peer: str) -> bool:
        return peer in self._links

    def rekey(self, peer: str) -> None:
        """Drop the link's keys: the next frame to ``peer`` starts a fresh handshake."""
        self._links.pop(peer, None)

    def forget(self, peer: str) -> None:
        for state in (self._links, self._offered, self._answered):
            state.pop(peer, None)

    def handshake_offer(self, peer: str) -> bytes | None:
        if peer in self._links:
            return None
        self._peer_identity(peer)
        eph, eph_pub = new_ephemeral()
        self._offered[peer] = (eph, eph_pub)
        return bytes([OFFER]) + eph_pub

    def on_handshake(self, peer: str, body: bytes) -> bytes | None:
        kind, eph_peer = body[0], body[1:]
        id_peer = self._peer_identity(peer)
        if kind == OFFER and peer in self._offered:
            # Crossed offers: both sides initiated at once. The lower name stays initiator, so
            # both end with one key: it ignores the peer's offer; the other drops its own.
            if self.local < peer:
                raise CodecError(f"crossed handshake offers with {peer!r}: ours stands")
            del self._offered[peer]
        if kind == OFFER:  # we respond: derive the link now, answer with our ephemeral key
            eph, eph_pub = new_ephemeral()
            self._links[peer] = derive_link(
                exchange(eph, eph_peer), self.session, peer, self.local, id_peer,
                self.identity(), eph_peer, eph_pub, we_initiated=False)
            self._answered[peer] = eph_peer
            return bytes([ANSWER]) + eph_pub
        eph, eph_pub = self._offered.pop(peer)  # open() already checked that we offered
        self._links[peer] = derive_link(
            exchange(eph, eph_peer), self.session, self.local, peer, self.identity(), id_peer,
            eph_pub, eph_peer, we_initiated=True)
        return None

    def _transcript(self, body: bytes, sender: str, receiver: str) -> bytes:
        """What a handshake frame's signature covers (before the header is appended)."""
        kind, eph = body[0], body[1:]
        if kind == OFFER:
            return transcript(OFFER, self.session, sender, receiver, eph)
        if kind != ANSWER:
            raise CodecError(f"unknown handshake type {kind}")
        if sender == self.local:  # our answer to receiver's offer
            return transcript(ANSWER, self.session, receiver, sender, self._answered[receiver], eph)
        offered = self._offered.get(sender)
        if offered is None:
            raise CodecError(f"unsolicited handshake answer from {sender!r}")
        return transcript(ANSWER, self.session, receiver, sender, offered[1], eph)

    # --- frames ----------------------------------------------------------------------------
    def payload_len(self, kind: MessageKind, plaintext_len: int) -> int:
        return plaintext_len + (SIG_LEN if kind == MessageKind.HANDSHAKE else TAG_LEN)

    def seal_into(self, header: FrameHeader, header_bytes: bytes, plaintext: memoryview,
                  out: memoryview) -> None:
        if header.kind == MessageKind.HANDSHAKE:
            body = bytes(plaintext)
            if len(body) != BODY_LEN:
                raise CodecError(f"handshake body must be {BODY_LEN} bytes")
            signed = self._transcript(body, self.local, header.receiver) + header_bytes
            out[:] = body + self._identity.sign(signed)
            return
        link = self._links.get(header.receiver)
        if link is None:
            raise CodecError(f"no key for link {self.local}->{header.receiver}: handshake first")
        link.send.encrypt_into(nonce(link.send_tag, header.seq), plaintext, header_bytes, out)

    def open_into(self, frame: Frame, out: memoryview) -> None:
        h = frame.header
        if h.kind == MessageKind.HANDSHAKE:
            if len(frame.payload) != HANDSHAKE_LEN:
                raise CodecError(f"handshake payload must be {HANDSHAKE_LEN} bytes")
            body, sig = bytes(frame.payload[:BODY_LEN]), bytes(frame.payload[BODY_LEN:])
            signed = self._transcript(body, h.sender, self.local) + frame.header_bytes
            verify(self._peer_identity(h.sender), sig, signed)
            out[:] = body
            return
        link = self._links.get(h.sender)
        if link is None:
            raise CodecError(f"no key for link {h.sender}->{self.local}: unknown or unkeyed peer")
        if len(frame.payload) != h.tensor_nbytes + TAG_LEN:
            raise CodecError(f"encrypted payload is {len(frame.payload)} bytes, "
                             f"expected {h.tensor_nbytes + TAG_LEN}")
        try:
            link.recv.decrypt_into(nonce(link.recv_tag, h.seq), frame.payload, frame.header_bytes,
                                   out)
        except InvalidTag:
            raise CodecError(
                f"authentication failed on {h.sender}->{self.local} seq {h.seq}: "
                "tampered, or sealed under another link's key") from None


@register_codec
class SecretSharedCodec(EncryptedCodec):
    """The secret-shared protocol's links: shares travel under the encrypted codec."""

    name = "secret-shared"
    codec_id = 2
    description = "additive shares to two non-colluding servers, over AES-GCM links"
    topology = "mpc"
