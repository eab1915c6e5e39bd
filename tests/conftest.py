"""Shared fixtures: one loopback-only local Ray cluster for the tests that need Ray; how the
suite is split between pytest-xdist's workers."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from actors.ray_env import prepare

prepare()  # before anything imports Ray
# One intra-op thread per test process: the README's command runs two xdist workers, which fill
# two cores; more threads each would only fight over them (each Ray role uses one as well).
torch.set_num_threads(1)

from attack.validator import CACHE_ENV  # noqa: E402

# Every Ray run and every `python -m actors.simulate` a test starts trains the same validator
# from the same digits and seed (seconds of CPU each, in a Ray task or a subprocess): one
# directory for the whole session, made by the first process (xdist's controller; its workers,
# Ray's processes and the subprocesses inherit the variable), removed by the process that made
# it. A directory the user set is theirs: kept.
_MADE_CACHE = CACHE_ENV not in os.environ
if _MADE_CACHE:
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="splitwire-validators-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _MADE_CACHE:
        shutil.rmtree(os.environ[CACHE_ENV], ignore_errors=True)

#: The xdist work unit that every test starting Ray belongs to: one cluster at a time, in one
#: worker, in file order (test_cluster shuts the single-node cluster down and starts its own).
RAY_GROUP = "ray"
#: The files whose tests start Ray (marked ray or cluster); collection fails if a Ray test is
#: found anywhere else, so a new one cannot run beside another cluster unnoticed.
RAY_FILES = ("tests/test_cluster.py", "tests/test_ray_integration.py", "tests/test_sweep.py")
#: Work units that take longest, handed out first so no worker is left with a long one at the
#: end (longest-first scheduling; measured with --durations, 2026-12-02: the Ray unit ~210 s,
#: then 58, 45, 30, 28, 20, 19, 18, 18, 16, 16 and 11 s).
LONGEST_FIRST = (RAY_GROUP, "test_secret_shared_run", "test_networks_cli", "test_malicious_run",
                 "test_defended_run", "test_detectors", "test_encrypted_run", "test_fsha",
                 "test_cli", "test_many_owners", "test_detector_recovery", "test_ushaped")


def work_unit(nodeid: str) -> str:
    """Every module is one xdist unit, so its module-scoped runs are trained once, in one
    worker; the Ray files are one more unit. (A scheduler, not xdist_group marks: with
    pytest 9, xdist 3.8's loadgroup no longer renames the tests it groups.)"""
    path = nodeid.split("::", 1)[0]
    if path in RAY_FILES:
        return RAY_GROUP
    return path.rsplit("/", 1)[-1].removesuffix(".py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    strays = [item.nodeid for item in items
              if (item.get_closest_marker("ray") or item.get_closest_marker("cluster"))
              and work_unit(item.nodeid) != RAY_GROUP]
    if strays:
        raise pytest.UsageError(f"Ray tests outside RAY_FILES in tests/conftest.py: {strays}")

    def rank(item: pytest.Item) -> int:
        unit = work_unit(item.nodeid)
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)

    # Every process sorts alike (xdist checks the workers collected one order); the scheduler
    # hands the units out in this order (--no-loadscope-reorder).
    items.sort(key=rank)  # stable: file order within a unit and among the rest


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


#: Validators trained in this process: (model, torch's global RNG state right after training).
_VALIDATORS: dict[tuple[object, ...], tuple[torch.nn.Module, torch.Tensor]] = {}


def train_validator_once(x: np.ndarray, y: np.ndarray, classes: int, *, seed: int = 0,
                         epochs: int = 4, batch_size: int = 64) -> torch.nn.Module:
    """attack.validator.train_validator, trained once per process for each input. The lab
    trains its judge from the run's images, labels and seed alone, so every in-process CLI or
    API run on mnist-small with seed 0 trained the same network again (seconds each). A cached
    call returns a copy of that network and leaves torch's global RNG where training left it
    (training reseeds it), so the run goes on bit for bit as it would have."""
    from attack.validator import train_validator

    x, y = np.asarray(x), np.asarray(y)
    if x.dtype == object or y.dtype == object:  # not images: let the real check refuse them
        return train_validator(x, y, classes, seed=seed, epochs=epochs, batch_size=batch_size)
    key = (x.shape, x.dtype.str, hashlib.sha256(x.tobytes()).hexdigest(), y.shape,
           y.dtype.str, hashlib.sha256(y.tobytes()).hexdigest(), classes, seed, epochs,
           batch_size)
    if key not in _VALIDATORS:
        model = train_validator(x, y, classes, seed=seed, epochs=epochs, batch_size=batch_size)
        _VALIDATORS[key] = (model, torch.get_rng_state())
    model, rng_after = _VALIDATORS[key]
    torch.set_rng_state(rng_after)
    return copy.deepcopy(model)


@pytest.fixture(autouse=True)
def validator_trained_once(request: pytest.FixtureRequest,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process lab (actors.api) trains its judge through train_validator_once. Not
    for tests that start Ray: there the judge trains in a Ray task, which must get the real
    function."""
    if request.node.get_closest_marker("ray") or request.node.get_closest_marker("cluster"):
        return
    import actors.api

    monkeypatch.setattr(actors.api, "train_validator_cached", train_validator_once)


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
