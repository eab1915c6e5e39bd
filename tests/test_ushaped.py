"""U-shaped splits: no labels on the wire, yet the returned gradients leak them (Li et al.)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from actors.api import LabOptions, load_dataset, run_lab
from actors.data import Split, TargetData
from actors.lab import EAVESDROPPER
from actors.nets.zoo import ModelSpec, build_network, split_sequential
from actors.simulate import main
from protocol.frame import MessageKind, decode_header

FAST = dict(backend="local", epochs=1, attack_epochs=1, aux_size=64, train_size=640,
            protocols=("plaintext",), adversaries=("eavesdropper", "server"))


def _kinds_on_the_wire(options: LabOptions) -> tuple[set[MessageKind], object]:
    kinds: set[MessageKind] = set()

    def tap(protocol: str, backend: object) -> None:
        for _, _, data in backend.call(EAVESDROPPER, "capture"):  # type: ignore[attr-defined]
            kinds.add(decode_header(data).kind)

    report = run_lab(options, after_protocol=tap)
    return kinds, report


@pytest.mark.e2e
def test_no_labels_frame_crosses_the_wire_under_u_shaped_but_the_gradients_leak_them():
    kinds, report = _kinds_on_the_wire(LabOptions(topology="u-shaped", **FAST))
    assert MessageKind.LABELS not in kinds
    assert {MessageKind.MIDDLE, MessageKind.MIDDLE_GRADIENTS, MessageKind.INFER_MIDDLE} <= kinds
    assert MessageKind.PREDICTIONS not in kinds  # the logits stay at the owner's tail
    for run in report.runs:
        leak = run.label_leak
        assert run.topology == "u-shaped" and leak["examples"] > 500
        # 10 classes, one known label per class: far above the majority class's share
        assert leak["label_accuracy"] > leak["chance"] + 0.4
    assert report.runs[0].target_accuracy > 0.15  # the tail trained on the owner's own loss


def _binary_case() -> tuple[TargetData, object]:
    """MNIST "is it a zero?": 10% positives, the rare class of Li et al.'s setting."""
    data = load_dataset(LabOptions(train_size=1280))

    def binary(split: Split) -> Split:
        return Split(split.x, (split.y == 0).astype(np.int64))

    data = TargetData("mnist-zero", data.input_shape, 2, binary(data.train), binary(data.test),
                      binary(data.holdout))
    torch.manual_seed(0)
    seq = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(784, 64)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(64, 64)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(64, 2))]))
    net = split_sequential("mlp-binary", seq, "relu1", (1, 28, 28), 2, u_shaped=True)
    return data, net


@pytest.mark.e2e
def test_norm_attack_beats_chance_and_falls_towards_it_under_max_norm_noise():
    data, net = _binary_case()
    options = LabOptions(model=net, dataset=data, topology="u-shaped", **FAST | {
        "train_size": None, "adversaries": ("server",)})
    clean = run_lab(options).runs[0].label_leak
    defended = run_lab(replace(options, defences=("max-norm:scale=1",))).runs[0].label_leak
    assert clean["norm_auc"] > 0.8, clean
    assert abs(defended["norm_auc"] - 0.5) < 0.5 * abs(clean["norm_auc"] - 0.5), defended
    assert clean["cosine_auc"] > 0.9  # the direction gives it away exactly (a linear tail)


def test_u_shaped_networks_keep_the_vanilla_initial_weights_and_carry_the_tail():
    vanilla = build_network(ModelSpec("mlp"))
    u = build_network(ModelSpec("mlp", topology="u-shaped"))
    assert u.tail_cut == "relu2" and u.middle_shape == (500,)
    assert torch.equal(u.owner.tail.fc3.weight, vanilla.server.fc3.weight)
    # the tail's weights and momentum travel in the owner's flat state (hand-offs, checkpoints)
    assert u.owner_layout.state_size == vanilla.owner_layout.state_size + 2 * (500 * 10 + 10)
    part = u.owner_from(u.initial_state())
    assert part(torch.zeros(2, 1, 28, 28)).shape == (2, 500)  # forward: the head alone
    cnn = build_network(ModelSpec("cnn", topology="u-shaped"))
    assert cnn.tail_cut == "relu4" and cnn.middle_shape == (84,)


@pytest.mark.parametrize("argv, message", [
    (["--topology", "u-shaped", "--attack", "output"], "never leave"),
    (["--tail-cut", "fc2"], "needs --topology u-shaped"),
    (["--defence", "max-norm"], "needs --topology u-shaped"),
    (["--topology", "sideways"], "invalid choice"),
    (["--topology", "u-shaped", "--cut", "relu2", "--epochs", "1"], "must come after"),
    (["--defence", "marvell:scale=0"], "scale must be"),
])
def test_u_shaped_cli_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--backend", "local", "--quiet", "--out", str(tmp_path)]) == 2 \
        if "--cut" in argv else _exits_2(argv + ["--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def _exits_2(argv: list[str]) -> bool:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code == 2


def test_the_sweep_plot_gains_a_label_leakage_panel(tmp_path):
    import matplotlib.image as mpimg

    from actors.sweep_plot import plot
    from tests.sweep_records import synthetic_records

    records = synthetic_records()
    plot(tmp_path / "plain.png", records)
    for r in records:
        leak = {"none": 1.0, "noise": 0.9}.get(r["family"], 0.5 - r["strength"] / 20)
        r["labels"] = {"label_accuracy": leak, "chance": 0.11}
    plot(tmp_path / "labels.png", records)
    wide, plain = (mpimg.imread(tmp_path / n).shape[1] for n in ("labels.png", "plain.png"))
    assert wide > plain  # a fourth panel: label leakage against target accuracy


@pytest.mark.e2e
def test_two_owners_hand_the_tail_on_and_a_killed_server_recovers_exactly_once():
    from actors.faults import parse_chaos

    options = LabOptions(topology="u-shaped", clients=2, chaos=(parse_chaos("server@7"),),
                         checkpoint_every=4, **FAST | {"adversaries": ("server",)})
    run = run_lab(options).runs[0]
    assert run.restarts == 1 and run.batches["sent"] == run.batches["applied"], run.batches
    assert run.target_accuracy > 0.15 and run.label_leak["examples"] > 0
    # both owners deployed the same final head and tail (the last holder shared it)
    assert len(run.per_owner) == 2
