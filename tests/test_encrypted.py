"""The encrypted codec: what it must refuse, and that it never repeats a nonce or leaks bytes."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from protocol import crypto
from protocol.endpoint import Endpoint
from protocol.errors import CodecError, FrameError
from protocol.frame import MessageKind, decode_frame

ACTS = MessageKind.ACTIVATIONS


def parties(*names: str, session: int = 77, registry_of: tuple[str, ...] | None = None):
    eps = {n: Endpoint(n, "encrypted", session) for n in names}
    pinned = {n: eps[n].identity() for n in (registry_of or names)}
    for e in eps.values():
        e.trust(pinned)
    return eps


def handshake(a: Endpoint, b: Endpoint) -> None:
    offer = a.handshake_offer(b.name)
    (answer,) = b.handshake(b.decode(offer))
    assert a.handshake(a.decode(answer)) == []
    assert a.codec.link_ready(b.name) and b.codec.link_ready(a.name)


@pytest.fixture
def link():
    eps = parties("owner:0", "server", "server:1")
    handshake(eps["owner:0"], eps["server"])
    return eps


def tensor(seed=0, shape=(2, 3)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_round_trip_and_payload_is_not_the_tensor(link):
    a, b = link["owner:0"], link["server"]
    t = tensor()
    frame = a.encode("server", ACTS, t)
    assert t.tobytes() not in frame
    np.testing.assert_array_equal(b.decode(frame).tensor, t)
    # and the other direction of the same link
    back = b.encode("owner:0", MessageKind.GRADIENTS, t * 2)
    np.testing.assert_array_equal(a.decode(back).tensor, t * 2)


def test_every_single_bit_flip_is_rejected(link):
    a, b = link["owner:0"], link["server"]
    frame = a.encode("server", ACTS, tensor())
    for bit in range(len(frame) * 8):
        bad = bytearray(frame)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            b.decode(bytes(bad))
    assert b.accept(frame) is not None  # the receiver still works, the true frame opens


def test_every_bit_of_a_handshake_frame_is_authenticated():
    eps = parties("owner:0", "server")
    a, b = eps["owner:0"], eps["server"]
    offer = a.handshake_offer("server")
    for bit in range(len(offer) * 8):
        bad = bytearray(offer)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert b.accept(bytes(bad)) is None
    assert b.accept(offer) is not None


def test_truncation_replay_and_reorder_beyond_window(link):
    a, b = link["owner:0"], link["server"]
    frames = [a.encode("server", ACTS, tensor(i)) for i in range(100)]
    for cut in (1, 10, len(frames[0]) - 1):
        assert b.accept(frames[0][:cut]) is None
    assert b.accept(frames[0]) is not None
    assert b.accept(frames[0]) is None  # replay
    assert b.accept(frames[99]) is not None  # jump ahead...
    assert b.accept(frames[50]) is not None  # ...a late frame inside the window is fine once
    assert b.accept(frames[50]) is None  # but not twice
    assert b.accept(frames[10]) is None  # and one older than the window is refused
    assert b.stats.dropped["FrameError"] + b.stats.dropped["CodecError"] == 6
    assert b.accept(a.encode("server", ACTS, tensor())) is not None


def test_frame_sealed_for_another_link_does_not_open(link):
    a, s0, s1 = link["owner:0"], link["server"], link["server:1"]
    handshake(a, s1)
    # a frame for server:1 re-addressed to server: the header changes, and so does the key
    frame = bytearray(a.encode("server:1", ACTS, tensor()))
    raw = bytes(frame).replace(b"server:1", b"server\x00\x00", 1)
    assert s0.accept(raw) is None
    # server:1 sealing under its own key while claiming to be owner:0 in the header
    forged = Endpoint("owner:0", s1.codec, 77)  # server:1's codec, owner:0's name on the frame
    forged._next_seq["server"] = 10**6
    with pytest.raises(CodecError):
        forged.encode("server", ACTS, tensor())  # it holds no owner:0<->server key at all
    handshake(s1, s0)
    spoof = bytearray(s1.encode("server", ACTS, tensor()))
    spoof_frame = decode_frame(bytes(spoof))
    assert spoof_frame.header.sender == "server:1"
    assert s0.accept(bytes(spoof)) is not None  # genuine frame from server:1 opens
    relabelled = bytes(spoof).replace(b"server:1", b"owner:0\x00", 1)
    assert s0.accept(relabelled) is None


def test_unknown_identity_is_refused():
    eps = parties("owner:0", "server", "mallory", registry_of=("owner:0", "server"))
    eps["mallory"].trust({**{n: eps[n].identity() for n in ("owner:0", "server")},
                          "mallory": eps["mallory"].identity()})
    offer = eps["mallory"].handshake_offer("server")
    assert eps["server"].accept(offer) is None
    assert eps["server"].stats.dropped["CodecError"] == 1
    with pytest.raises(CodecError, match="unknown identity"):
        eps["owner:0"].handshake_offer("mallory")


def test_handshake_with_wrong_signature_fails():
    eps = parties("owner:0", "server")
    impostor = Endpoint("owner:0", "encrypted", 77)  # same name, a different identity key
    impostor.trust({n: e.identity() for n, e in eps.items()})
    offer = impostor.handshake_offer("server")
    with pytest.raises(CodecError, match="signature"):
        eps["server"].decode(offer)
    assert not eps["server"].codec.link_ready("owner:0")
    # handshake transcripts are bound to the session too
    other = parties("owner:0", "server", session=78)
    with pytest.raises(FrameError):
        eps["server"].decode(other["owner:0"].handshake_offer("server"))


def test_no_data_before_handshake():
    eps = parties("owner:0", "server")
    with pytest.raises(CodecError, match="handshake first"):
        eps["owner:0"].encode("server", ACTS, tensor())


class RecordingAEAD:
    """Wraps a link's sealing key and remembers every nonce it was asked to use."""

    def __init__(self, aead, log: list[bytes]) -> None:
        self.aead, self.log = aead, log

    def encrypt_into(self, nonce: bytes, data, aad: bytes, out) -> None:
        self.log.append(nonce)
        self.aead.encrypt_into(nonce, data, aad, out)


def test_nonces_never_repeat_over_a_long_run_with_rekeying():
    eps = parties("owner:0", "server")
    a, b = eps["owner:0"], eps["server"]
    per_key: list[list[bytes]] = []
    for _ in range(3):
        a.codec.rekey("server")
        handshake(a, b)
        for ep, peer in ((a, "server"), (b, "owner:0")):
            per_key.append([])
            ep.codec._links[peer].send = RecordingAEAD(ep.codec._links[peer].send, per_key[-1])
        for i in range(1500):
            b.decode(a.encode("server", ACTS, tensor(i, (1, 4))))
            a.decode(b.encode("owner:0", MessageKind.GRADIENTS, tensor(i, (1, 4))))
    assert len(per_key) == 6 and all(len(log) == 1500 for log in per_key)
    assert all(len(set(log)) == len(log) for log in per_key)  # never twice under one key
    everything = [n for log in per_key for n in log]
    assert len(set(everything)) == len(everything)  # not even across keys and directions


def test_link_refuses_before_the_counter_can_wrap(link):
    a = link["owner:0"]
    a._next_seq["server"] = crypto.MAX_FRAMES_PER_KEY
    with pytest.raises(CodecError, match="re-key"):
        a.encode("server", ACTS, tensor())


def test_ciphertext_hides_the_activations_and_looks_random(link):
    a = link["owner:0"]
    rng = np.random.default_rng(3)
    acts = np.maximum(rng.normal(size=(64, 500)), 0).astype(np.float32)  # ReLU-like, many zeros
    payloads = b"".join(decode_frame(a.encode("server", ACTS, acts)).payload for _ in range(8))
    plain = acts.tobytes()
    chunks = {plain[i:i + 8] for i in range(0, len(plain), 8)} - {b"\0" * 8}
    assert not any(payloads.find(c) >= 0 for c in list(chunks)[:2000])
    counts = np.bincount(np.frombuffer(payloads, np.uint8), minlength=256)
    p = counts / counts.sum()
    entropy = -sum(x * math.log2(x) for x in p if x > 0)
    assert entropy > 7.99
    plain_counts = np.bincount(np.frombuffer(plain, np.uint8), minlength=256) / len(plain)
    assert -sum(x * math.log2(x) for x in plain_counts if x > 0) < 7.5


def test_private_keys_cannot_leave_the_process(link):
    identity = link["owner:0"].codec._identity
    with pytest.raises(TypeError, match="never leaves"):
        pickle.dumps(identity)
    assert "private" not in repr(identity).lower() or "..." in repr(identity)
    assert "secret" in repr(link["owner:0"].codec._links["server"])
