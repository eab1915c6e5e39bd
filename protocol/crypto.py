"""Link security primitives: identities, the signed ephemeral handshake, and per-link keys.

The design follows TLS 1.3's record layer in miniature:

* every party has a long-term **Ed25519 identity**; a trust registry, set up by the simulation
  like pinned keys, gives each party its peers' public keys;
* a link is keyed by an **ephemeral X25519** exchange, each side signing the transcript (protocol
  label, session id, both names, both ephemeral keys) with its identity;
* **HKDF-SHA256** expands the shared secret into one AES-256-GCM key per direction, bound to both
  identities, both names, the session id and the direction;
* each frame's 96-bit nonce is a 4-byte direction tag plus the frame's 64-bit sequence number,
  so a nonce never repeats under a key; a link refuses to send once the counter reaches
  ``MAX_FRAMES_PER_KEY`` (a new handshake re-keys it).

Private keys never leave the object that made them: nothing here serialises one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import CodecError

PROTOCOL_LABEL = b"splitwire/v1"
OFFER, ANSWER = 1, 2
KEY_LEN = 32
SIG_LEN = 64
HANDSHAKE_LEN = 1 + KEY_LEN + SIG_LEN  # type tag, ephemeral public key, signature
#: Sequence numbers a key may protect; far below 2^64 so the nonce can never wrap.
MAX_FRAMES_PER_KEY = 2**48
#: Nonce direction tags: the initiator->responder and responder->initiator halves of a link.
I2R, R2I = b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"

_RAW = {"encoding": serialization.Encoding.Raw, "format": serialization.PublicFormat.Raw}


def _lp(data: bytes) -> bytes:
    """Length-prefixed, so concatenated names can never be ambiguous."""
    return struct.pack("<H", len(data)) + data


def transcript(kind: int, session: int, initiator: str, responder: str, eph_i: bytes,
               eph_r: bytes = b"") -> bytes:
    return (PROTOCOL_LABEL + bytes([kind]) + struct.pack("<Q", session) + _lp(initiator.encode())
            + _lp(responder.encode()) + _lp(eph_i) + _lp(eph_r))


class Identity:
    """A party's long-term Ed25519 key pair. Only the public half can be read out."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(**_RAW)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:  # never print key material, even by accident
        return f"Identity(public={self.public.hex()[:16]}...)"

    def __reduce__(self):  # a private key must not be pickled off to another process
        raise TypeError("an Identity's private key never leaves its process")


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise CodecError("handshake signature invalid") from None


@dataclass
class LinkKeys:
    """One established link: a sealing key for each direction and the nonce tags."""

    send: AESGCM
    recv: AESGCM
    send_tag: bytes
    recv_tag: bytes

    def __repr__(self) -> str:
        return "LinkKeys(<secret>)"


def derive_link(shared: bytes, session: int, initiator: str, responder: str, id_i: bytes,
                id_r: bytes, eph_i: bytes, eph_r: bytes, we_initiated: bool) -> LinkKeys:
    context = (_lp(initiator.encode()) + _lp(responder.encode()) + _lp(id_i) + _lp(id_r)
               + _lp(eph_i) + _lp(eph_r))

    def key(direction: bytes) -> AESGCM:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=struct.pack("<Q", session),
                    info=PROTOCOL_LABEL + b"/key" + direction + context)
        return AESGCM(hkdf.derive(shared))

    k_i2r, k_r2i = key(I2R), key(R2I)
    if we_initiated:
        return LinkKeys(send=k_i2r, recv=k_r2i, send_tag=I2R, recv_tag=R2I)
    return LinkKeys(send=k_r2i, recv=k_i2r, send_tag=R2I, recv_tag=I2R)


def nonce(tag: bytes, seq: int) -> bytes:
    if seq >= MAX_FRAMES_PER_KEY:
        raise CodecError(f"sequence number {seq} exhausts this link's key: re-key first")
    return tag + struct.pack("<Q", seq)


def new_ephemeral() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes(**_RAW)


def exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise CodecError("handshake carries an invalid X25519 key") from None
