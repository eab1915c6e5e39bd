"""An attack fit may take a node's idle cores (``actors.fit_cores.fit_threads``) only because its
result does not depend on the thread count: checked here bit for bit, on the lab's shapes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from actors import fit_cores
from actors.backend import LocalBackend
from actors.fit_cores import fit_threads, threads_agree, usable_cores
from attack.ladder import RUNG_CLASSES, intercept_point, make_attack


def _digest(model: torch.nn.Module) -> str:
    state = model.state_dict()
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()


def _fit_digests(method: str, width: int) -> dict[int, str]:
    """A rung's fitted weights on one thread and on every core. The default run's shapes:
    ``width``-d answers (cut activations, or logits) of 28x28 images, full batches and a
    ragged last one, so the threaded matrix products and reductions really split."""
    rng = np.random.default_rng(7)
    acts = np.maximum(rng.normal(0, 1, (700, width)), 0).astype(np.float32)
    images = rng.random((700, 1, 28, 28), dtype=np.float32)
    digests = {}
    for sharers in (None, 1):
        rung = make_attack(method, epochs=1, seed=0, input_shape=(1, 28, 28))
        with fit_threads(sharers) as threads:
            digests[threads] = _digest(rung.fit(acts, images))
    return digests


INVARIANT = [name for name, cls in RUNG_CLASSES.items() if cls.THREAD_INVARIANT]


@pytest.mark.skipif(usable_cores() < 2, reason="one core: every fit has one thread")
@pytest.mark.parametrize("method", INVARIANT)
def test_every_rung_that_may_take_idle_cores_fits_the_same_bits_on_any_thread_count(method):
    width = 10 if intercept_point(method) == "output" else 500
    digests = _fit_digests(method, width)
    assert len(digests) == 2 and len(set(digests.values())) == 1, digests


def test_the_default_attack_may_take_idle_cores():
    # What the secret-shared run's tail gains from (its one fit is the default rung's).
    assert "mlp" in INVARIANT and "output" in INVARIANT


def test_fit_threads_splits_the_cores_and_restores_one_thread():
    cores = usable_cores()
    before = torch.get_num_threads()
    with fit_threads(None) as threads:
        assert threads == before == torch.get_num_threads()
    with fit_threads(1) as threads:
        assert threads == torch.get_num_threads() == cores
    with fit_threads(2) as threads:
        assert threads == max(1, cores // 2)
    with fit_threads(10 * cores) as threads:
        assert threads == 1
    with pytest.raises(RuntimeError), fit_threads(1):
        raise RuntimeError("a failed fit")
    assert torch.get_num_threads() == before


@pytest.mark.skipif(usable_cores() < 2, reason="one core: every fit has one thread")
def test_the_blas_gives_the_same_bits_on_every_core_in_the_lab():
    # MKL_CBWR=AUTO,STRICT (actors/__init__.py) in effect: without it MKL's small-batch
    # products differ by thread count on Intel CPUs, and a fit on idle cores would not be
    # the fit on one.
    assert threads_agree(usable_cores())


def test_a_fit_keeps_its_thread_count_where_more_threads_would_change_its_bits(monkeypatch):
    monkeypatch.setattr(fit_cores, "threads_agree", lambda threads: threads == 1)
    before = torch.get_num_threads()
    with fit_threads(1) as threads:
        assert threads == before == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_in_process_fits_keep_one_thread_and_ray_lanes_split_the_node():
    from actors.ray_backend import RayBackend, RolePool

    assert LocalBackend().fit_sharers(3) is None
    base = RolePool.open_count()
    first, second = RolePool(), RolePool()
    try:
        assert RolePool.open_count() == base + 2
        assert RayBackend.fit_sharers(object.__new__(RayBackend), 1) == base + 2
        second.close()
        second.close()  # closing twice counts once
        assert RayBackend.fit_sharers(object.__new__(RayBackend), 3) == 3 * (base + 1)
    finally:
        first.close()
        second.close()
    assert RolePool.open_count() == base
