"""Any split network from the command line: built-in cuts, a user's module, refusals."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from actors.simulate import main

FAST = ["--backend", "local", "--quiet", "--epochs", "1", "--attack-epochs", "2",
        "--aux-size", "300", "--adversary", "eavesdropper"]


def test_list_cuts_prints_every_cut_with_its_shape(capsys):
    assert main(["--model", "cnn", "--list-cuts"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cuts = dict(line.split("\t") for line in lines)
    assert cuts["conv1"] == "8x24x24" and cuts["relu2"] == "16x8x8" and cuts["fc2"] == "84"
    assert len(lines) == 11


@pytest.mark.parametrize(("flags", "needle"), [
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--model", "cnn", "--cut", "conv7"], "unknown cut 'conv7'"),
    (["--model", "cnn-rgb"], "3x32x32"),  # the default dataset is 1x28x28
    (["--model", "no_such_module_xyz:net"], "cannot import"),
    (["--dataset", "imagenet"], "--dataset"),
])
def test_a_network_that_cannot_run_is_one_line_and_exit_2(flags, needle, tmp_path, capsys):
    try:
        code = main([*flags, *FAST, "--out", str(tmp_path / "o")])
    except SystemExit as exc:  # refused while parsing the flags
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_user_net.py").write_text(textwrap.dedent("""
        from torch import nn
        def build():
            # Tanh in the server part: secret sharing has no protocol for it (yet)
            return nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(4 * 12 * 12, 32), nn.Tanh(),
                                 nn.Linear(32, 10)), 2
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tiny_user_net", None)
    return "tiny_user_net:build"


@pytest.mark.e2e
def test_a_network_from_outside_the_repository_trains_and_is_attacked(user_module, tmp_path):
    """A user's module, a rank-4 cut (N x 4 x 12 x 12) crossing the wire, attacked end to end;
    --protocol all skips secret sharing (it cannot run a Conv2d server part yet) and says so."""
    out, cap = tmp_path / "o", tmp_path / "wire.cap"
    code = main(["--model", user_module, "--protocol", "plaintext", "--attack", "conv",
                 *FAST, "--epochs", "2", "--attack-epochs", "8", "--aux", "holdout",
                 "--out", str(out), "--capture", str(cap)])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["network"]["cut_shape"] == [4, 12, 12]
    (run,) = doc["runs"]
    assert run["model"] == user_module and run["target_accuracy"] > 0.3
    assert run["attack"]["ssim"] > run["baseline"]["ssim"]  # better than the mean image
    from protocol.capture import read_capture
    from protocol.frame import MessageKind, decode_header

    headers = [decode_header(rec[2]) for rec in read_capture(cap)]  # snapped: headers only
    shapes = {h.shape for h in headers if h.kind == MessageKind.INFER_ACTIVATIONS}
    assert shapes and all(len(s) == 4 and s[1:] == (4, 12, 12) for s in shapes)


@pytest.mark.e2e
def test_protocol_all_skips_what_cannot_run_and_says_why(user_module, tmp_path, capsys):
    code = main(["--model", user_module, "--protocol", "all", *FAST, "--epochs", "1",
                 "--out", str(tmp_path / "o")])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipping --protocol secret-shared" in err and "Tanh" in err
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {r["protocol"] for r in doc["runs"]} == {"plaintext", "encrypted"}
    assert "secret-shared" in doc["skipped"]


def test_secret_shared_by_name_refuses_the_layer_it_cannot_run(user_module, tmp_path,
                                                                 capsys):
    code = main(["--model", user_module, "--protocol", "secret-shared", *FAST,
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Tanh" in err and len(err.splitlines()) == 1


@pytest.mark.e2e
def test_generated_colour_images_run_through_plaintext_and_encrypted(tmp_path):
    """cnn-rgb on 3x32x32 arrays of the user's own (npz): both one-server protocols."""
    from actors.api import audit

    rng = np.random.default_rng(0)
    y = np.arange(1600) % 10
    # Ten classes: a bright patch of one colour channel at a class-dependent place, on noise.
    x = rng.random((1600, 3, 32, 32), dtype=np.float32) * 0.3
    for c in range(10):
        r, k = 4 + 16 * (c // 5), 1 + 6 * (c % 5)
        x[y == c, c % 3, r:r + 8, k:k + 6] += 0.7
    np.savez(tmp_path / "colour.npz", x=np.clip(x, 0, 1), y=y)
    report = audit("cnn-rgb", f"npz:{tmp_path / 'colour.npz'}", aux="holdout",
                   protocols=("plaintext", "encrypted"), attacks=("mlp",), lr=0.02,
                   batch_size=16, epochs=2, attack_epochs=5, backend="local",
                   adversaries=("eavesdropper",))
    runs = {r.protocol: r for r in report.runs}
    assert set(runs) == {"plaintext", "encrypted"}
    assert runs["plaintext"].target_accuracy > 0.3  # chance: 0.1
    assert runs["plaintext"].reconstructions.shape == (500, 3, 32, 32)
    assert runs["plaintext"].attack.ssim > runs["encrypted"].attack.ssim
    from actors import report as figures

    figures.write_figure(tmp_path / "colour.png", report.runs)  # colour images in colour
    assert (tmp_path / "colour.png").stat().st_size > 5_000
