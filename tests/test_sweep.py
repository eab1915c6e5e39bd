"""The privacy-utility sweep: cells as Ray tasks, resumable, plotted."""

from __future__ import annotations

import json

import pytest

from actors.sweep import main, strongest

pytestmark = pytest.mark.ray

TINY = ["--noise-scales", "2", "--nopeek-weights", "--dropout-rates", "--budgets", "100",
        "--attacks", "mlp", "--epochs", "1", "--attack-epochs", "1", "--aux-size", "300"]


def test_sweep_runs_resumes_and_plots(ray_local, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main([*TINY, "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    cells = {r["cell"] for r in doc["records"]}
    assert cells == {"none", "noise:mechanism=laplace,scale=2,clip=64", "query-budget:limit=100"}
    budget = next(r for r in doc["records"] if r["family"] == "query-budget")
    assert budget["queries_used"] == 100
    assert (out / "privacy_utility.png").stat().st_size > 10_000
    capsys.readouterr()

    # a rerun redoes nothing ...
    assert main([*TINY, "--out", str(out)]) == 0
    assert "3 already done, 0 to run" in capsys.readouterr().out
    assert json.loads((out / "sweep.json").read_text())["records"] == doc["records"]
    # ... and after losing one cell, redoes exactly that one
    doc["records"] = [r for r in doc["records"] if r["family"] != "noise"]
    (out / "sweep.json").write_text(json.dumps(doc))
    assert main([*TINY, "--out", str(out)]) == 0
    assert "2 already done, 1 to run" in capsys.readouterr().out
    again = json.loads((out / "sweep.json").read_text())["records"]
    assert {r["cell"] for r in again} == cells and len(again) == 3


def test_other_settings_refuse_the_old_file(ray_local, tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"schema": 1, "settings": {"aux": "noise"},
                                                "records": []}))
    assert main([*TINY, "--out", str(out), "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_strongest_attack_is_chosen_per_cell():
    rec = [{"cell": "a", "attack": "mlp", "attack_metrics": {"validator_accuracy": 0.5,
                                                             "ssim": 0.4}},
           {"cell": "a", "attack": "conv", "attack_metrics": {"validator_accuracy": 0.7,
                                                              "ssim": 0.3}}]
    assert strongest(rec)["a"]["attack"] == "conv"
    assert strongest(rec, ("mlp",))["a"]["attack"] == "mlp"
    assert strongest(rec, ("whitebox",)) == {}
    assert strongest(rec, metric="ssim")["a"]["attack"] == "mlp"


def test_goal_needs_both_utility_and_privacy():
    from actors.sweep import meets_goal

    def rec(acc: float, val: float) -> dict:
        return {"target_accuracy": acc, "attack_metrics": {"validator_accuracy": val}}

    assert meets_goal(rec(0.95, 0.12)) and meets_goal(rec(0.90, 0.30))
    assert not meets_goal(rec(0.89, 0.12)) and not meets_goal(rec(0.95, 0.31))


def test_report_names_the_cells_that_meet_the_goal(capsys):
    from actors.sweep import Cell, report

    cells = [Cell("none", 0.0, ()), Cell("query-budget", 10, ("query-budget:limit=10",))]
    recs = [{"cell": c, "attack": a, "target_accuracy": acc,
             "attack_metrics": {"validator_accuracy": v, "ssim": 0.2}}
            for c, a, acc, v in [("none", "mlp", 0.95, 0.9), ("none", "whitebox", 0.95, 0.96),
                                 ("query-budget:limit=10", "mlp", 0.95, 0.15),
                                 ("query-budget:limit=10", "whitebox", 0.95, 0.96)]]
    report(cells, recs)
    out = capsys.readouterr().out
    assert "under the strongest attack: met by no cell" in out
    assert "without the first part's weights: query-budget:limit=10" in out


@pytest.mark.parametrize("flags", [["--dropout-rates", "1.5"], ["--noise-scales", "nan"],
                                   ["--lr", "0"], ["--lr", "inf"],
                                   ["--budgets", "0"], ["--attacks", "psychic"]])
def test_bad_grid_exits_2(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main(flags)
    assert exc.value.code == 2


def test_combined_cells_stack_defences_in_canonical_form():
    from actors.sweep import build_parser, grid

    args = build_parser().parse_args([
        "--noise-scales", "--nopeek-weights", "--dropout-rates", "--budgets",
        "--combined", "noise:mechanism=laplace,scale=0.5,clip=64+nopeek:weight=1"])
    none, combined = grid(args)
    assert none.defences == () and combined.family == "combined"
    assert len(combined.defences) == 2
    assert combined.defences[0].startswith("noise:") and combined.defences[1].startswith("nopeek:")
