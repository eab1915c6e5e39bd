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
    second = FrameServer("127.0.0.1", lambda frames: [b"again"])
    client.set_addresses({"peer": second.address})
    assert client.exchange("peer", [b"x"]) == [b"again"]
    second.close()


def test_absurd_announcements_are_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall((10**6).to_bytes(4, "little"))
        with pytest.raises(PeerGoneError, match="frames"):
            recv_frames(b)
