"""Endpoints and roles: validated delivery, drop-and-count, and counters per link."""

from __future__ import annotations

import numpy as np
import pytest

from protocol.endpoint import Endpoint
from protocol.errors import FrameError
from protocol.frame import MessageKind
from tests.helpers import plaintext_server


def pair(session: int = 1):
    return Endpoint("owner:0", "plaintext", session), Endpoint("server", "plaintext", session)


def test_encode_decode_and_counters():
    a, b = pair()
    t = np.random.default_rng(0).normal(size=(4, 500)).astype(np.float32)
    frame = a.encode("server", MessageKind.ACTIVATIONS, t)
    msg = b.decode(frame)
    assert msg.kind == MessageKind.ACTIVATIONS and msg.sender == "owner:0" and msg.seq == 0
    np.testing.assert_array_equal(msg.tensor, t)
    assert a.stats.frames == 1 and a.stats.bytes == len(frame)
    assert a.stats.frames_sent[("owner:0", "server")] == 1
    assert a.encode("server", MessageKind.LABELS, np.zeros(4, np.int64)) != frame
    assert b.stats.frames_received == 1


@pytest.mark.parametrize("case", ["replay", "wrong-receiver", "wrong-session", "garbage", "nan"])
def test_bad_frames_are_dropped_and_counted(case):
    a, b = pair()
    t = np.ones((2, 500), np.float32)
    good = a.encode("server", MessageKind.ACTIVATIONS, t)
    assert b.accept(good) is not None
    if case == "replay":
        bad = good
    elif case == "wrong-receiver":
        bad = a.encode("server:1", MessageKind.ACTIVATIONS, t)
    elif case == "wrong-session":
        bad = Endpoint("owner:0", "plaintext", 2).encode("server", MessageKind.ACTIVATIONS, t)
    elif case == "garbage":
        bad = b"\x00" * 40
    else:
        raw = bytearray(a.encode("server", MessageKind.ACTIVATIONS, t))
        raw[-4:] = np.array([np.nan], np.float32).tobytes()
        bad = bytes(raw)
    assert b.accept(bad) is None
    assert sum(b.stats.dropped.values()) == 1
    with pytest.raises(FrameError):
        b.decode(bad)
    # and the endpoint keeps working for the next good frame
    assert b.accept(a.encode("server", MessageKind.ACTIVATIONS, t)) is not None


def test_receiver_refuses_nan_and_inf():
    a, b = pair()
    for bad in (np.nan, np.inf, -np.inf):
        frame = a.encode("server", MessageKind.ACTIVATIONS, np.array([[1.0, bad]], np.float32))
        with pytest.raises(FrameError, match="NaN"):
            b.decode(frame)


def test_server_drops_bad_content_and_keeps_training():
    server = plaintext_server()
    owner = Endpoint("owner:0", "plaintext", 1)
    bad = [
        owner.encode("server", MessageKind.ACTIVATIONS, np.ones((3, 7), np.float32)),  # shape
        owner.encode("server", MessageKind.LABELS, np.array([1, 99])),  # label range
        owner.encode("server", MessageKind.ACTIVATIONS, np.ones((2, 500), np.float32)),  # no labels
        owner.encode("server", MessageKind.QUERY, np.ones((1, 784), np.float32)),  # wrong role
        b"not a frame at all",
    ]
    assert server.handle(bad) == []
    assert sum(server.endpoint.stats.dropped.values()) == 5
    replies = server.handle([
        owner.encode("server", MessageKind.LABELS, np.array([1, 2], np.int64)),
        owner.encode("server", MessageKind.ACTIVATIONS, np.ones((2, 500), np.float32)),
    ])
    kinds = [owner.decode(r).kind for r in replies]
    assert kinds == [MessageKind.GRADIENTS, MessageKind.CONTROL]
    assert server.steps == 1
