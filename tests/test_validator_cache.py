"""The validator cache: the network and the RNG exactly as training leaves them, or no cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attack.validator as validator
from attack.validator import CACHE_ENV, train_validator, train_validator_cached
from protocol.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    from actors.data import load_target

    data = load_target(seed=0)
    return data.train.x[:256], data.train.y[:256]


def _trained(fn, x, y, **kw):
    model = fn(x, y, 10, seed=3, epochs=1, **kw)
    return {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state().clone()


def _same(a, b) -> bool:
    (state_a, rng_a), (state_b, rng_b) = a, b
    return (state_a.keys() == state_b.keys()
            and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
            and torch.equal(rng_a, rng_b))


def test_a_hit_gives_the_trained_network_and_rng_without_training(digits, tmp_path,
                                                                  monkeypatch):
    x, y = digits
    want = _trained(train_validator, x, y)
    first = _trained(train_validator_cached, x, y, cache_dir=tmp_path)
    assert _same(first, want) and len(list(tmp_path.glob("validator-*.npz"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("trained again despite a cached file")

    monkeypatch.setattr(validator, "train_validator", refuse)
    torch.manual_seed(12345)  # a hit must restore the RNG, not leave whatever was there
    assert _same(_trained(train_validator_cached, x, y, cache_dir=tmp_path), want)


def test_other_inputs_get_other_files_and_no_directory_means_no_cache(digits, tmp_path,
                                                                      monkeypatch):
    x, y = digits
    train_validator_cached(x, y, 10, seed=3, epochs=1, cache_dir=tmp_path)
    train_validator_cached(x, y, 10, seed=4, epochs=1, cache_dir=tmp_path)
    flipped = x.copy()
    flipped.flat[0] = 1 - flipped.flat[0]
    train_validator_cached(flipped, y, 10, seed=3, epochs=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("validator-*.npz"))) == 3
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.chdir(tmp_path / "..")
    before = sorted(p.name for p in tmp_path.parent.rglob("*"))
    train_validator_cached(x, y, 10, seed=5, epochs=1)
    assert sorted(p.name for p in tmp_path.parent.rglob("*")) == before


def test_a_damaged_file_is_retrained_and_replaced(digits, tmp_path):
    x, y = digits
    want = _trained(train_validator, x, y)
    train_validator_cached(x, y, 10, seed=3, epochs=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("validator-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    assert _same(_trained(train_validator_cached, x, y, cache_dir=tmp_path), want)
    with np.load(path, allow_pickle=False) as saved:  # whole again
        assert "rng" in saved.files


def test_a_directory_that_cannot_hold_the_cache_is_a_config_error(digits, tmp_path):
    x, y = digits
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=CACHE_ENV):
        train_validator_cached(x, y, 10, seed=3, epochs=1, cache_dir=blocker / "cache")


def test_a_change_to_the_optimiser_is_a_new_key(digits, tmp_path, monkeypatch):
    # The validator trains with attack.adam: a network cached before its optimiser changed
    # is not the one training would give now.
    x, y = digits
    before = validator._cache_key(x, y, 10, 3, 1, 64)
    changed = tmp_path / "adam.py"
    changed.write_bytes(open(validator.adam.__file__, "rb").read() + b"\n# changed\n")
    monkeypatch.setattr(validator.adam, "__file__", str(changed))
    assert validator._cache_key(x, y, 10, 3, 1, 64) != before
