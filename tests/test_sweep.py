"""The privacy-utility sweep: cells as Ray tasks, resumable, plotted."""

from __future__ import annotations

import json

import pytest

from actors.sweep import SCHEMA, main, strongest

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
    for r in doc["records"]:  # issue 15's blocks, on every record
        assert r["reid"]["n"] == 500 and 0 <= r["reid"]["pixel_top1"] <= 1
        assert r["label_only"]["reid"]["pixel_top1"] <= 10 / 500  # one guess per class
        assert r["excess"]["reid_top1_gain"] == pytest.approx(
            max(v for v in (r["reid"]["pixel_top1"], r["reid"]["feature_top1"]) if v is not None)
            - max(v for v in (r["label_only"]["reid"]["pixel_top1"],
                              r["label_only"]["reid"]["feature_top1"]) if v is not None))
    noise = next(r for r in doc["records"] if r["family"] == "noise")
    # one epoch, Laplace b=2 with L1 clip 64: one release at epsilon 128 / 2
    assert noise["epsilon_run"]["releases"] == 1 and noise["epsilon_run"]["epsilon"] == 64
    assert not noise["epsilon_run"]["meaningful"] and budget["epsilon_run"] is None
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
    (out / "sweep.json").write_text(json.dumps({"schema": SCHEMA, "settings": {"aux": "noise"},
                                                "records": []}))
    assert main([*TINY, "--out", str(out), "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_an_older_sweep_file_is_refused(tmp_path):
    from actors.sweep import load
    from protocol.errors import SplitWireError

    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"schema": 1, "settings": {}, "records": []}))
    with pytest.raises(SplitWireError, match="another version"):
        load(path, {})


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


def _cells_of(records):
    from actors.sweep import Cell

    seen = {}
    for r in records:
        seen.setdefault(r["cell"], Cell(r["family"], r["strength"], tuple(r["defences"])))
    return list(seen.values())


def test_report_adds_reidentification_excess_and_run_epsilon(capsys):
    from actors.sweep import report
    from tests.sweep_records import synthetic_records

    records = synthetic_records()
    report(_cells_of(records), records)
    out = capsys.readouterr().out
    assert "chance 0.2%" in out and "re-id@1 pixel 2.0%" in out
    noise = next(line for line in out.splitlines()
                 if line.startswith("noise:mechanism=laplace,scale=0.5,clip=64 "))
    assert "2.56e+03*" in noise and "no meaningful DP (above 10)" in out
    assert "restated goal" in out and "met by no cell; closest: most private at >= 90%" in out
    # a useful cell whose every rung stays within 5 points of the label-only baseline meets it
    for r in records:
        if r["cell"] == "dropout:rate=0.3":
            r["excess"]["reid_top1_gain"] = 0.04
    report(_cells_of(records), records)
    assert "points above label-only): dropout:rate=0.3" in capsys.readouterr().out


def test_strongest_by_reidentification_excess():
    rec = [{"cell": "a", "attack": a, "attack_metrics": {"validator_accuracy": v, "ssim": s},
            "excess": {"reid_top1_gain": g}}
           for a, v, s, g in [("output", 0.9, 0.3, 0.0), ("conv", 0.8, 0.6, 0.4),
                              ("mlp", 0.7, 0.5, 0.4)]]
    assert strongest(rec, metric="reid_excess")["a"]["attack"] == "conv"  # SSIM breaks ties
    assert strongest(rec)["a"]["attack"] == "output"
    del rec[1]["excess"]
    assert strongest(rec, metric="reid_excess")["a"]["attack"] == "mlp"


def test_plot_numbers_every_setting_without_overlapping_labels(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from actors.sweep_plot import place_labels, plot
    from tests.sweep_records import synthetic_records

    records = synthetic_records()
    plot(tmp_path / "p.png", records)
    assert (tmp_path / "p.png").stat().st_size > 30_000
    # 30 points crowded into a corner (a few pixels apart), as the high-accuracy cells are,
    # and three exactly on top of each other
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    pts = [(0.85 + 0.015 * (i % 6), 0.85 + 0.02 * (i // 6), str(i + 1)) for i in range(30)]
    pts += [(0.5, 0.5, "31"), (0.5, 0.5, "32"), (0.5, 0.5, "33")]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
    renderer = fig.canvas.get_renderer()
    labels = place_labels(ax, pts, renderer)
    fig.canvas.draw()  # annotations know where their text is only once drawn
    # the text only (an annotation's own extent includes its leader line)
    boxes = [plt.Text.get_window_extent(a, renderer) for a in labels]
    assert sorted(n for a in labels for n in a.get_text().split(",")) == sorted(
        str(i) for i in range(1, 34))  # every number shown once
    assert "31,32,33" in [a.get_text() for a in labels]
    clashes = [(i, j) for i in range(len(boxes)) for j in range(i)
               if boxes[i].overlaps(boxes[j])]
    assert clashes == []
    plt.close(fig)


def test_cuts_grid_every_setting_at_every_cut():
    from dataclasses import fields

    from actors.lab import RunConfig
    from actors.sweep import build_parser, grid

    args = build_parser().parse_args(["--noise-scales", "1", "--nopeek-weights",
                                      "--dropout-rates", "--budgets", "--cuts", "conv1", "pool2"])
    cells = grid(args)
    assert [c.key for c in cells] == [
        "none cut=conv1", "noise:mechanism=laplace,scale=1,clip=64 cut=conv1",
        "none cut=pool2", "noise:mechanism=laplace,scale=1,clip=64 cut=pool2"]
    assert grid(build_parser().parse_args(["--cuts", "x"]))[0].cut == "x"
    if "cut" not in {f.name for f in fields(RunConfig)}:  # until the lab splits at a layer
        with pytest.raises(SystemExit) as exc:
            main(["--cuts", "conv1"])
        assert exc.value.code == 2
