"""The socket data plane in-process: length-prefixed exchanges, bounds, a vanished peer."""

from __future__ import annotations

import socket

import pytest

from actors.socket_plane import FrameClient, FrameServer, PeerGoneError, recv_frames


def test_exchange_round_trips_frames_of_any_size():
    server = FrameServer("127.0.0.1", lambda frames: [f[::-1] for f in frames] + [b""])
    client = FrameClient()
    client.set_addresses({"peer": server.address})
    frames = [b"a", bytes(range(256)) * 4096, b""]
    for _ in range(3):  # one persistent connection, several exchanges
        assert client.exchange("peer", frames) == [f[::-1] for f in frames] + [b""]
    server.close()


def test_a_closed_peer_is_peer_gone_and_a_new_address_reconnects():
    first = FrameServer("127.0.0.1", lambda frames: frames)
    client = FrameClient()
    client.set_addresses({"peer": first.address})
    assert client.exchange("peer", [b"x"]) == [b"x"]
    first.close()
    with pytest.raises(PeerGoneError):
        client.exchange("peer", [b"x"])
    # A new connection is refused too: close() must stop the listener although its accept
    # thread is blocked in accept() (a retired worker's old role must not stay reachable).
    with pytest.raises(PeerGoneError):
        client.exchange("peer", [b"x"])
    second = FrameServer("127.0.0.1", lambda frames: [b"again"])
    client.set_addresses({"peer": second.address})
    assert client.exchange("peer", [b"x"]) == [b"again"]
    second.close()
    client.close()
    assert not client.knows("peer")


def test_absurd_announcements_are_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall((10**6).to_bytes(4, "little"))
        with pytest.raises(PeerGoneError, match="frames"):
            recv_frames(b)


def test_gathered_writes_survive_partial_sends_and_many_buffers():
    # A tiny send buffer makes sendmsg stop inside a buffer again and again; more frames than
    # one call takes buffers (IOV_MAX) makes it go on across calls. The bytes must arrive in
    # order, whole, and frames of every size (empty ones too) keep their boundaries.
    import threading

    from actors.socket_plane import IOV_MAX, send_frames

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [bytes([i % 251]) * (i * 37 % 3001) for i in range(IOV_MAX + 300)]
    frames[5] = bytearray(b"")
    frames[7] = bytearray(range(256)) * 700  # bytearrays (what encode returns) too
    got: list = []
    reader = threading.Thread(target=lambda: got.append(recv_frames(b)))
    with a, b:
        reader.start()
        send_frames(a, frames)
        reader.join(timeout=30)
    assert got and [bytes(f) for f in got[0]] == [bytes(f) for f in frames]
