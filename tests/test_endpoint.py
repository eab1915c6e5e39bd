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


def test_a_replay_renamed_with_a_trailing_newline_is_refused():
    """On a plaintext link nothing but the replay window stops a replay; a name with a final
    newline used to pass as a new sender, with a fresh window of its own (defect 1)."""
    a, b = pair()
    good = a.encode("server", MessageKind.ACTIVATIONS, np.ones((1, 500), np.float32))
    assert b.accept(good) is not None
    raw = bytearray(good.replace(b"owner:0", b"owner:0\n", 1))
    raw[9] += 1  # the sender name's length
    assert b.accept(bytes(raw)) is None and b.stats.dropped["FrameError"] == 1
    assert list(b._windows) == ["owner:0"]


def _doc_replay_boundary() -> int:
    """How far behind the newest frame docs/wire-format.md says a frame may still arrive."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "wire-format.md").read_text()
    found = re.search(r"frames may arrive up to (\d+)\s+behind the newest accepted one", doc)
    assert found, "the spec must state the replay window's boundary"
    return int(found.group(1))


def test_replay_window_boundary_is_the_specs():
    """Exactly as far behind as the spec says is accepted, one further is refused (defect 4)."""
    limit = _doc_replay_boundary()
    a, b = pair()
    t = np.ones((1, 500), np.float32)
    sent = [a.encode("server", MessageKind.ACTIVATIONS, t) for _ in range(limit + 3)]
    newest = limit + 2
    assert b.accept(sent[newest]) is not None
    assert b.accept(sent[newest - limit]) is not None  # `limit` behind: inside the window
    with pytest.raises(FrameError, match="outside the replay window"):
        b.decode(sent[newest - limit - 1])  # one further: refused
    with pytest.raises(FrameError, match="replayed"):
        b.decode(sent[newest - limit])


def test_plaintext_peers_are_bounded():
    """A plaintext link authenticates nobody, so the windows a role keeps are capped."""
    b = Endpoint("server", "plaintext", 1, max_peers=8)
    t = np.ones((1, 3), np.float32)
    for i in range(8):
        assert b.accept(Endpoint(f"owner:{i}", "plaintext", 1).encode("server", ACTS, t))
    stranger = Endpoint("owner:99", "plaintext", 1).encode("server", ACTS, t)
    with pytest.raises(FrameError, match="refusing a new sender"):
        b.decode(stranger)
    assert len(b._windows) == 8
    # known peers keep working
    assert b.accept(Endpoint("owner:0", "plaintext", 1).encode("server", ACTS, t)) is None  # replay
    again = Endpoint("owner:0", "plaintext", 1)
    again.encode("server", ACTS, t)
    assert b.accept(again.encode("server", ACTS, t)) is not None


ACTS = MessageKind.ACTIVATIONS
