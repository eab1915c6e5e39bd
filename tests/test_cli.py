"""The command line: bad input is one line and exit 2; a small local run writes its outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from actors.simulate import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "actors.simulate", *args],
                          capture_output=True, text=True, timeout=120)


def test_unknown_protocol_exits_2_with_one_line():
    proc = run_cli("--protocol", "bogus")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--protocol" in lines[0] and "bogus" in lines[0]
    assert "plaintext" in lines[0] and "encrypted" in lines[0]


@pytest.mark.parametrize("flags,needle", [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "three"], "--epochs"),
    (["--lr", "nan"], "--lr"),
    (["--aux", "pictures"], "--aux"),
    (["--clients", "-2"], "--clients"),
    (["--seed", "-1"], "--seed"),
    (["--no-such-flag"], "unrecognized"),
    (["--partition", "dirichlet:0"], "--partition"),
    (["--partition", "skewed"], "--partition"),
    (["--chaos", "server"], "--chaos"),
    (["--chaos", "dealer@3"], "--chaos"),
    (["--schedule", "async"], "--schedule"),
    (["--owner-actors", "0"], "--owner-actors"),
    (["--placement", "far"], "--placement"),
    (["--resume", "x"], "--resume"),
])
def test_bad_flags_exit_2(flags, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_missing_optional_dataset_is_a_one_line_error(tmp_path, capsys):
    code = main(["--dataset", "mnist-full", "--data-dir", str(tmp_path), "--backend", "local",
                 "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("--download" in err or "vision" in err)


def test_help_exits_0():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "--protocol" in proc.stdout and "--capture" in proc.stdout


@pytest.mark.e2e
def test_small_local_run_writes_results_figure_and_capture(tmp_path, capsys):
    out, cap = tmp_path / "out", tmp_path / "wire.cap"
    code = main(["--protocol", "plaintext", "--adversary", "eavesdropper", "--backend", "local",
                 "--epochs", "2",
                 "--attack-epochs", "5", "--aux-size", "1500", "--out", str(out),
                 "--capture", str(cap), "--quiet", "--seed", "1"])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["protocol"] == "plaintext" and doc["config"]["seed"] == 1
    (run,) = doc["runs"]
    assert run["protocol"] == "plaintext" and run["adversary"] == "eavesdropper"
    assert run["aux"] == "letters"
    assert set(run["attack"]) == {"mse", "psnr", "ssim", "validator_accuracy"}
    assert run["target_accuracy"] > 0.8
    assert run["attack"]["validator_accuracy"] > 0.3  # chance is 0.1
    assert run["wire"]["frames"] > 0 and run["wire"]["bytes"] > run["wire"]["frames"] * 32
    assert (out / "reconstructions.png").stat().st_size > 10_000
    from protocol.capture import read_capture

    captured = list(read_capture(cap))
    # the capture is every frame except the eavesdropper's own oracle queries and answers
    own = run["wire"]["links"]["eavesdropper->owner:0"]["frames"] * 2
    assert len(captured) == run["wire"]["frames"] - own
    assert "plaintext" in capsys.readouterr().out


@pytest.mark.parametrize("flags,needle", [
    (["--chaos", "owner:5@3", "--clients", "2"], "only 2 owners"),
    (["--chaos", "server@100000"], "steps 0.."),
    (["--protocol", "secret-shared", "--chaos", "server@3"], "one-server"),
    (["--resume", "/nonexistent/checkpoint"], "--resume"),
])
def test_impossible_fault_plans_exit_2(flags, needle, tmp_path, capsys):
    protocol = [] if "--protocol" in flags else ["--protocol", "plaintext"]
    code = main([*protocol, *flags, "--epochs", "1", "--backend", "local", "--quiet",
                 "--out", str(tmp_path / "o"), "--aux-size", "100"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_an_unknown_ring_kernel_in_the_environment_exits_2_before_any_role(tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("SPLITWIRE_RING_KERNEL", "fastest-please")
    code = main(["--protocol", "secret-shared", "--epochs", "1", "--backend", "local",
                 "--quiet", "--out", str(tmp_path / "o"), "--aux-size", "100"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "SPLITWIRE_RING_KERNEL='fastest-please'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "results.json").exists()  # nothing ran
