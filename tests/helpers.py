"""Small builders several test files share."""

from __future__ import annotations

from actors.model import seeded_parts
from actors.owner import TrainConfig
from actors.server import ComputeServer
from actors.wire import LocalTransport, Network


def plaintext_server() -> ComputeServer:
    """A plaintext compute server for session 1 on an in-process wire, seed-0 second part."""
    return ComputeServer("server", codec="plaintext", session=1,
                         network=Network("server", LocalTransport()), model=seeded_parts(0)[1],
                         config=TrainConfig())
