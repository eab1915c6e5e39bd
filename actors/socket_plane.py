"""A data plane outside Ray's actor calls: frames over persistent loopback TCP connections.

A Ray actor call costs about 1.3 ms plus the serialisation of its arguments; a training step
is one such exchange each way. With ``--data-plane sockets`` each role also listens on a TCP
port of its node's address (127.0.0.1 on one machine) and peers exchange frames over
persistent connections; Ray still places, starts, calls and rebuilds the roles, and the taps'
copies still travel as Ray calls. No Ray import here: the protocol is plain bytes, length-
prefixed (``u32`` frame count, then per frame ``u64`` length and the bytes), one request and
one reply per exchange, so it can be tested in-process.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

_COUNT = struct.Struct("<I")
_LEN = struct.Struct("<Q")
#: Frames per exchange and bytes per frame a peer may announce (bounds what we allocate).
MAX_FRAMES, MAX_FRAME_BYTES = 4096, 1 << 30
#: Seconds an exchange may wait for its reply before the peer counts as gone.
EXCHANGE_S = 600.0


class PeerGoneError(ConnectionError):
    """The peer's connection closed or broke mid-exchange (the peer died, or restarted)."""


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerGoneError("connection closed")
        got += k
    return buf


#: Buffers one ``sendmsg`` call takes at most (Linux's IOV_MAX).
IOV_MAX = 1024


def send_frames(sock: socket.socket, frames: list[bytes | bytearray]) -> None:
    parts = [memoryview(_COUNT.pack(len(frames)))]
    for f in frames:
        parts += [memoryview(_LEN.pack(len(f))), memoryview(f).cast("B")]
    _send_all(sock, parts)


def _send_all(sock: socket.socket, parts: list[memoryview]) -> None:
    """``sendall`` of the concatenation, without making it: one gathering write (with
    TCP_NODELAY, one segment train) reads the frames where they are, so a secret-shared step's
    megabytes of shares are not copied once more into a joined buffer first."""
    i = 0
    while i < len(parts):
        sent = sock.sendmsg(parts[i:i + IOV_MAX])
        while i < len(parts) and sent >= len(parts[i]):
            sent -= len(parts[i])
            i += 1
        if sent:  # a partial write stopped inside parts[i]
            parts[i] = parts[i][sent:]


def recv_frames(sock: socket.socket) -> list[bytearray]:
    """One exchange's frames, each in a buffer of its own (handed on as received, not copied
    into ``bytes``: the frame decoder and the codecs read any buffer)."""
    (count,) = _COUNT.unpack(_recv_exact(sock, _COUNT.size))
    if count > MAX_FRAMES:
        raise PeerGoneError(f"peer announced {count} frames")
    frames = []
    for _ in range(count):
        (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        if n > MAX_FRAME_BYTES:
            raise PeerGoneError(f"peer announced a frame of {n} bytes")
        frames.append(_recv_exact(sock, n))
    return frames


class FrameServer:
    """Listens on ``host``; every connection is served by its own thread: read a request,
    ``handler(frames)`` (the caller serialises it with the role's other entry points), reply."""

    def __init__(self, host: str, handler: Callable[[list[bytes]], list[bytes]]) -> None:
        self.handler = handler
        self.conns: list[socket.socket] = []
        self.sock = socket.create_server((host, 0))
        self.address = self.sock.getsockname()[:2]
        threading.Thread(target=self._accept, daemon=True, name="frame-server").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    frames = recv_frames(conn)
                except (PeerGoneError, OSError):
                    return
                send_frames(conn, self.handler(frames))

    def close(self) -> None:
        """Stop listening and drop every connection (what a dying process does)."""
        try:
            # close() alone leaves the port listening while the accept thread is blocked in
            # accept() on it (Linux keeps the socket open for that call); shutdown wakes it.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class FrameClient:
    """One persistent connection per peer, opened on first use; one exchange at a time."""

    def __init__(self) -> None:
        self.addresses: dict[str, tuple[str, int]] = {}
        self._conns: dict[str, socket.socket] = {}
        self._lock = threading.Lock()

    def set_addresses(self, addresses: dict[str, tuple[str, int]]) -> None:
        """A new directory (a peer restarted elsewhere): reconnect to whoever moved."""
        with self._lock:
            for name, sock in list(self._conns.items()):
                if addresses.get(name) != self.addresses.get(name):
                    sock.close()
                    del self._conns[name]
            self.addresses = dict(addresses)

    def close(self) -> None:
        """Drop every connection (the role is done; a new one starts with a new client)."""
        self.set_addresses({})  # every peer "moved": each connection is closed

    def knows(self, peer: str) -> bool:
        return peer in self.addresses

    def exchange(self, peer: str, frames: list[bytes]) -> list[bytes]:
        with self._lock:
            sock = self._conns.get(peer)
            try:
                if sock is None:
                    # A peer that vanishes without closing (a lost machine) is noticed
                    # within the timeout; no single exchange takes minutes.
                    sock = socket.create_connection(self.addresses[peer], timeout=EXCHANGE_S)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._conns[peer] = sock
                send_frames(sock, frames)
                return recv_frames(sock)
            except (PeerGoneError, OSError) as exc:
                if sock is not None:
                    sock.close()
                self._conns.pop(peer, None)
                raise PeerGoneError(f"{peer}: {exc}") from None
