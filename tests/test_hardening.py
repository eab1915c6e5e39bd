"""Frames a hostile peer might forge: none of them may crash a party or be accepted."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from actors.owner import DataOwner, TrainConfig
from actors.wire import LocalTransport, Network
from protocol.endpoint import Endpoint, ReplayWindow
from protocol.errors import CodecError, FrameError
from protocol.frame import FrameHeader, MessageKind, decode_frame, encode_header
from tests.helpers import mlp_net, plaintext_server
from tests.test_encrypted import parties


def forged(shape, kind=MessageKind.INFER_ACTIVATIONS, sender="owner:0", receiver="server",
           session=1, seq=0, payload=b""):
    header = FrameHeader(codec=0, kind=kind, dtype=1, shape=shape, sender=sender,
                         receiver=receiver, session=session, seq=seq, payload_len=len(payload))
    return encode_header(header) + payload


def server():
    return plaintext_server()


def test_an_empty_tensor_cannot_claim_huge_dimensions():
    bad = forged((0, 2**32 - 1, 2**32 - 1))
    with pytest.raises(FrameError, match="larger than any payload"):
        decode_frame(bad)
    s = server()
    assert s.handle([bad]) == []
    assert sum(s.endpoint.stats.dropped.values()) == 1


def test_replay_window_survives_huge_jumps():
    w = ReplayWindow()
    w.update(0)
    w.update(2**64 - 1)  # shifting the bitmap by the jump would allocate without bound
    assert w.top == 2**64 - 1 and w.seen == 1
    ep = Endpoint("server", "plaintext", 1)
    ep.accept(forged((1, 500), payload=np.zeros(500, np.float32).tobytes()))
    assert ep.accept(forged((1, 500), seq=2**64 - 1,
                            payload=np.zeros(500, np.float32).tobytes())) is not None


def test_a_frame_from_oneself_is_refused():
    eps = parties("server", "owner:0")
    offer = eps["owner:0"].handshake_offer("server")
    body = bytearray(offer)
    # re-address the offer so that it claims to come from the receiver itself
    self_addressed = bytes(body).replace(b"owner:0", b"server\x00", 1)
    assert eps["server"].accept(self_addressed) is None
    assert eps["server"].accept(forged((1,), sender="server", receiver="server")) is None


def test_only_owners_may_send_training_data_or_weights():
    s = server()
    spy = Endpoint("eavesdropper", "plaintext", 1)
    frames = [spy.encode("server", MessageKind.LABELS, np.array([1], np.int64)),
              spy.encode("server", MessageKind.ACTIVATIONS, np.ones((1, 500), np.float32)),
              spy.encode("server", MessageKind.INFER_ACTIVATIONS, np.ones((1, 500), np.float32))]
    assert s.handle(frames) == [] and s.steps == 0
    assert s.endpoint.stats.dropped["ShapeError"] == 3
    net = mlp_net(0)
    owner = DataOwner("owner:1", server="server", net=net, codec="plaintext", session=1,
                      network=Network("owner:1", LocalTransport()),
                      train=(np.zeros((1, *net.input_shape), np.float32), np.zeros(1, np.int64)),
                      test=(np.zeros((1, *net.input_shape), np.float32), np.zeros(1, np.int64)),
                      model=net.owner_part(), config=TrainConfig())
    before = owner.flat_weights().copy()
    zeros = np.zeros_like(before)
    owner.handle([spy.encode("owner:1", MessageKind.WEIGHTS, zeros)])
    assert owner.inbox is None and np.array_equal(owner.flat_weights(), before)  # refused
    peer = Endpoint("owner:0", "plaintext", 1)
    owner.handle([peer.encode("owner:1", MessageKind.WEIGHTS, zeros)])
    assert owner.inbox is not None and not owner.inbox.any()  # the previous owner may
    owner.deploy()  # hand it on, and the owner then serves it
    assert not owner.first_part_weights().any()


def test_crossed_handshake_offers_end_with_one_key():
    eps = parties("owner:0", "server")
    a, b = eps["owner:0"], eps["server"]
    offer_a, offer_b = a.handshake_offer("server"), b.handshake_offer("owner:0")
    # "owner:0" < "server": owner:0's offer stands; the server drops its own and answers
    with pytest.raises(CodecError, match="crossed"):
        a.handshake(a.decode(offer_b))
    (answer,) = b.handshake(b.decode(offer_a))
    a.handshake(a.decode(answer))
    frame = a.encode("server", MessageKind.ACTIVATIONS, np.ones((1, 3), np.float32))
    assert b.accept(frame) is not None
    back = b.encode("owner:0", MessageKind.GRADIENTS, np.ones((1, 3), np.float32))
    assert a.accept(back) is not None


def test_forged_inference_shapes_do_not_break_the_eavesdropper():
    from actors.eavesdropper import Eavesdropper

    spy = Eavesdropper("eavesdropper", codec="plaintext", session=1, net=mlp_net(0),
                       network=Network("eavesdropper", LocalTransport()))
    good = Endpoint("owner:0", "plaintext", 1).encode(
        "server", MessageKind.INFER_ACTIVATIONS, np.ones((2, 500), np.float32))
    odd = forged((3, 7), payload=np.zeros(21, np.float32).tobytes())
    spy.intercept([(0.0, len(odd), odd), (1.0, len(good), good), (2.0, 5, b"junk!")])
    got = spy.intercepted_activations("owner:0")
    assert got.acts.shape == (2, 500) and spy.unparseable == 1


def test_endpoint_counts_unexpected_failures_instead_of_raising():
    ep = Endpoint("server", "plaintext", 1)
    raw = bytearray(forged((2, 2), payload=np.zeros(4, np.float32).tobytes()))
    struct.pack_into("<I", raw, 28, 2**32 - 1)
    assert ep.accept(bytes(raw)) is None
    assert sum(ep.stats.dropped.values()) == 1


def test_forged_senders_cost_an_encrypted_link_no_memory():
    """Replay windows are made only after a frame authenticates: 5,000 frames from forged
    sender names leave none behind, and the heap does not grow with them (defect 2)."""
    import tracemalloc

    from tests.test_encrypted import handshake

    eps = parties("owner:0", "server")
    a, b = eps["owner:0"], eps["server"]
    handshake(a, b)
    good = a.encode("server", MessageKind.ACTIVATIONS, np.ones((1, 4), np.float32))
    assert b.accept(good) is not None
    windows = dict(b._windows)
    name_at = good.index(b"owner:0")

    def forge(i: int) -> bytes:
        name = f"x{i:06d}".encode()  # same length as "owner:0": no other byte moves
        return good[:name_at] + name + good[name_at + 7:]

    for i in range(500):  # warm up allocator caches before measuring
        b.accept(forge(i))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(500, 5_500):
        assert b.accept(forge(i)) is None
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert b._windows.keys() == windows.keys()
    # the old code kept a window (about 180 bytes) per forged name: 900 KB here
    assert grown < 100_000, f"heap grew {grown} bytes for 5,000 forged frames"
    assert b.stats.dropped["CodecError"] == 5_500
