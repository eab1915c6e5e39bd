"""A new attack rung and a new defence are one class and one registry call each: both are
registered here, in the test module, and run end to end through the CLI entry point."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from actors.simulate import main
from attack.base import Rung, register_rung, unregister_rung
from defences.base import OwnerDefence, Param, defence_generator
from defences.registry import register_defence, unregister_defence


@dataclass
class ClassMeanRung(Rung):
    """A toy black-box rung: the mean auxiliary image, whatever it intercepted."""

    seed: int = 0
    epochs: int = 1
    mean: np.ndarray | None = None
    fitted_on: int = 0

    def fit(self, acts, images):
        self.adopt_shape(images)
        self.mean, self.fitted_on = images.mean(0), len(acts)

    def reconstruct(self, acts):
        if self.mean is None:
            return self.empty()
        return np.repeat(self.mean[None], len(acts), 0).astype(np.float32)


class CutShift(OwnerDefence):
    """A toy defence: adds a random per-example offset to the cut, any cut shape."""

    name: ClassVar[str] = "toy-shift"
    params: ClassVar[dict[str, Param]] = {"amount": Param("float", required=True),
                                          "seed": Param("int")}
    order: ClassVar[int] = 20
    random: ClassVar[bool] = True
    applied: ClassVar[int] = 0

    def __init__(self, amount: float, seed: int = 0, *, stream: int | str = 0) -> None:
        self.amount = amount
        self.generator = defence_generator(seed, stream, self.name)

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        CutShift.applied += len(h)
        offset = torch.rand(len(h), generator=self.generator) * self.amount
        return h + offset.view(-1, *([1] * (h.dim() - 1)))


@pytest.fixture
def plugins():
    register_rung("toy-mean", ClassMeanRung)
    register_defence(CutShift)
    CutShift.applied = 0
    yield
    unregister_rung("toy-mean")
    unregister_defence("toy-shift")


@pytest.mark.e2e
def test_a_registered_rung_and_defence_run_through_the_cli(plugins, tmp_path):
    out = tmp_path / "o"
    code = main(["--protocol", "plaintext", "--adversary", "eavesdropper", "--backend", "local",
                 "--epochs", "1", "--aux-size", "300", "--quiet", "--out", str(out),
                 "--attack", "toy-mean", "--defence", "toy-shift:amount=0.5"])
    assert code == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["attack_method"] == "toy-mean" and run["defences"] == ["toy-shift:amount=0.5"]
    assert run["queries_used"] == 300  # it queried the (defended) oracle like any black box
    assert CutShift.applied >= 4000  # every training example, then inference and the oracle
    # The mean image scores like the lab's own mean-image baseline (same kind of guess).
    assert abs(run["attack"]["ssim"] - run["baseline"]["ssim"]) < 0.15


def test_unregistered_names_are_refused_again(capsys, tmp_path):
    code = None
    with pytest.raises(SystemExit) as exc:
        main(["--attack", "toy-mean", "--out", str(tmp_path)])
    code = exc.value.code
    assert code == 2 and "toy-mean" in capsys.readouterr().err
