"""Short in-process runs whose eavesdropper captures the tests of captures and docs read.

A few hundred training images and one inference batch per owner: every kind of traffic a
protocol has crosses the wire (handshakes, training, inference, the oracle), in seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from actors.backend import LocalBackend
from actors.data import Split, TargetData, load_target
from actors.lab import EAVESDROPPER, RunConfig, run_protocol
from protocol.capture import Record, write_capture


@functools.cache
def small_setting(n_train: int = 128, n_test: int = 250):
    data = load_target(seed=0)

    def cut(split: Split, start: int, n: int) -> Split:
        return Split(split.x[start:start + n].copy(), split.y[start:start + n].copy())

    small = TargetData(data.name, data.input_shape, data.classes, cut(data.train, 0, n_train),
                       cut(data.test, 0, n_test), cut(data.holdout, 0, 100))
    aux = data.holdout.x[100:164].copy()  # the attack is not what these runs are for

    def judge() -> torch.nn.Module:  # an untrained validator: scores are not looked at
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

    return small, aux, judge


def captured_run(protocol: str, path: Path, adversaries: tuple[str, ...] = ("eavesdropper",),
                 **kw) -> list[Record]:
    """Run ``protocol`` briefly, write the eavesdropper's capture to ``path`` (pcapng) as
    ``--capture`` does, and return its records."""
    torch.set_num_threads(1)
    data, aux, judge = small_setting()
    backend = LocalBackend()
    try:
        cfg = RunConfig(protocol=protocol, epochs=1, attack_epochs=1, seed=0,
                        adversaries=adversaries, **kw)
        run_protocol(backend, cfg, data, aux, judge)
        records = backend.call(EAVESDROPPER, "capture")
    finally:
        backend.shutdown()
    write_capture(path, records)
    return records
