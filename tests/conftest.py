"""Shared fixtures: one loopback-only local Ray cluster for the tests that need Ray."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from actors.ray_env import prepare

prepare()  # before anything imports Ray


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    from actors.ray_backend import init_ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": a stale cluster file from another run must never be joined by a test.
    init_ray(None, num_cpus=2, object_store_mb=300)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def lab_setting():
    """Target data, 2,500 letters of aux data and a quickly trained validator, shared by the
    in-process end-to-end tests (training the validator once saves every module the time)."""
    from actors.data import load_target
    from attack.auxiliary import load_aux
    from attack.validator import train_validator

    data = load_target(seed=0)
    aux = load_aux("letters", 2500, 0, data.input_shape)
    judge = train_validator(data.train.x, data.train.y, data.classes, seed=0, epochs=2)
    return data, aux, lambda: judge


class NetworkUsed(Exception):
    """Raised by the patched socket; deliberately not an OSError so nothing swallows it."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Make any outgoing connection fail loudly and record it, proving nothing is downloaded."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise NetworkUsed(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == [], f"code tried to reach the network: {attempts}"
