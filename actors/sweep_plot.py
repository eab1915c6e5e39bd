"""The sweep's privacy-utility plot: three panels and a key.

Each panel puts target accuracy (utility) against what the strongest rung *by that panel's
metric* recovers: validator accuracy (the class), SSIM (the strokes), and top-1
re-identification beyond the label-only baseline (the instance). Colour is the defence family,
marker shape the strongest rung, and every setting carries the same number in every panel;
the key beside the panels spells the numbers out. Numbers are placed greedily so that none
overlaps another number or a point (a leader line joins a number pushed away from its point).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from actors.sweep import (
    GOAL_ACCURACY,
    GOAL_REID_EXCESS,
    GOAL_VALIDATOR,
    black_box,
    run_epsilon_text,
    strongest,
    value,
)

PANELS = (("validator_accuracy", "validator accuracy, strongest rung by it (chance 0.1)"),
          ("ssim", "SSIM, strongest rung by SSIM"),
          ("reid_excess", "top-1 re-identification beyond label-only,\nstrongest rung by it"))
MARKERS = "osD^vPX<>hp*"
#: Label offsets tried, in points: close rings first, twelve directions each.
_RINGS = (7, 12, 18, 26, 36, 48, 64, 84)
_DIRECTIONS = 12


def _numbering(records: list[dict[str, Any]], order: list[str] | None) -> dict[str, int]:
    """Cell -> its number: grid order first, then any other cell in the file."""
    keys = list(dict.fromkeys([*(order or []), *(r["cell"] for r in records)]))
    present = {r["cell"] for r in records}
    return {k: i for i, k in enumerate((k for k in keys if k in present), start=1)}


def _boxes_overlap(a: Any, b: Any, pad: float = 1.0) -> bool:
    return not (a.x1 + pad < b.x0 or b.x1 + pad < a.x0 or a.y1 + pad < b.y0
                or b.y1 + pad < a.y0)


def _merge_coincident(ax: Any, points: list[tuple[float, float, str]],
                      within: float = 4.0) -> list[tuple[float, float, str]]:
    """Points drawn on top of each other (within ``within`` pixels) share one label: "1,13"."""
    groups: list[tuple[float, float, list[str], tuple[float, float]]] = []
    for x, y, text in points:
        px, py = ax.transData.transform((x, y))
        home = next((g for g in groups if math.hypot(g[3][0] - px, g[3][1] - py) <= within),
                    None)
        if home is None:
            groups.append((x, y, [text], (px, py)))
        else:
            home[2].append(text)
    return [(x, y, ",".join(sorted(texts, key=int))) for x, y, texts, _ in groups]


def place_labels(ax: Any, points: list[tuple[float, float, str]], renderer: Any) -> list[Any]:
    """Annotate each (x, y, text) so no label overlaps a placed label or any point; points on
    top of each other share one label.

    Greedy: for each point, the first offset (closest ring first) whose box is clear; if none
    is, the least crowded one. Axis limits must be final (the boxes are in display space).
    """
    from matplotlib.transforms import Bbox

    points = _merge_coincident(ax, points)
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    taken = [Bbox.from_extents(px - 6, py - 6, px + 6, py + 6) for px, py in marks]
    inside = ax.get_window_extent(renderer)
    px_per_pt = renderer.points_to_pixels(1.0)
    placed = []
    for (x, y, text), (px, py) in zip(points, marks, strict=True):
        # A label's size does not depend on where it goes: measure once, then try offsets.
        probe = ax.annotate(text, (x, y), fontsize=6.5, ha="center", va="center")
        size = probe.get_window_extent(renderer)
        probe.remove()
        half_w, half_h = size.width / 2, size.height / 2
        best: tuple[float, tuple[float, float], int, Any] = (math.inf, (0.0, 0.0), 0, None)
        for ring in _RINGS:
            for k in range(_DIRECTIONS):
                angle = math.pi / 4 + k * 2 * math.pi / _DIRECTIONS  # up-right first
                off = (ring * math.cos(angle), ring * math.sin(angle))
                cx, cy = px + off[0] * px_per_pt, py + off[1] * px_per_pt
                box = Bbox.from_extents(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
                outside = not (inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1))
                clash = sum(_boxes_overlap(box, t) for t in taken) + 100 * outside
                if clash < best[0]:
                    best = (clash, off, ring, box)
                if clash == 0:
                    break
            if best[0] == 0:
                break
        _, off, ring, box = best
        # Pushed away from its point: a thin line back to it.
        arrow = ({"arrowstyle": "-", "lw": 0.6, "color": "0.35", "shrinkA": 0, "shrinkB": 3}
                 if ring > _RINGS[0] else None)
        placed.append(ax.annotate(text, (x, y), xytext=off, textcoords="offset points",
                                  fontsize=6.5, ha="center", va="center", arrowprops=arrow))
        taken.append(box)
    return placed


def _panel(ax: Any, records: list[dict[str, Any]], metric: str, numbers: dict[str, int],
           style: dict[str, Any]) -> list[tuple[float, float, str]]:
    """Curves and markers of one panel; returns the points to number."""
    best = strongest(records, metric=metric)
    points = []
    for family, colour in style["colours"].items():
        pts = sorted((r for r in best.values() if r["family"] == family),
                     key=lambda r: (r.get("cut") or "", r["strength"]))
        if not pts:
            continue
        xs = [r["target_accuracy"] for r in pts]
        ys = [value(r, metric) for r in pts]
        if family not in ("none", "combined"):  # stacks of defences are points, not a curve
            ax.plot(xs, ys, "-", color=colour, lw=1, alpha=0.6)
        for r, x, y in zip(pts, xs, ys, strict=True):
            ax.plot(x, y, style["markers"][r["attack"]], color=colour, ms=9 if
                    family == "none" else 6, mec="black" if family == "none" else colour)
            points.append((x, y, str(numbers[r["cell"]])))
    # Where the strongest rung needs the weights, what is left to an adversary without them.
    blind = strongest(records, black_box(), metric)
    gaps = [b for k, b in blind.items() if value(b, metric) < value(best[k], metric)]
    if gaps:
        ax.plot([b["target_accuracy"] for b in gaps], [value(b, metric) for b in gaps], "x",
                color="grey", ms=5)
    return points


def _decorate(axes: list[Any], has_reid: bool) -> None:
    val, _ssim, reid = axes
    val.axhline(0.1, color="grey", lw=0.8, ls=":")
    # Issue 6's goal: target accuracy >= 90% with validator accuracy <= 30%.
    val.fill_between([GOAL_ACCURACY, 1.0], 0, GOAL_VALIDATOR, color="green", alpha=0.08)
    # A reconstruction that only gets the class right scores the model's own accuracy.
    val.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
    val.set_ylim(0, 1.05)
    # Issue 15's goal: >= 90% accuracy, at most 5 points of re-identification beyond the label.
    reid.axhline(0.0, color="grey", lw=0.8, ls=":")
    lo, hi = reid.get_ylim()
    reid.fill_between([GOAL_ACCURACY, 1.0], min(lo, -0.02), GOAL_REID_EXCESS, color="green",
                      alpha=0.08)
    if not has_reid:
        reid.text(0.5, 0.5, "no re-identification in these records", ha="center",
                  transform=reid.transAxes, color="grey")
    for ax, (_, ylabel) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("target accuracy (utility)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
    reid.set_ylim(min(lo, -0.02), max(hi, GOAL_REID_EXCESS + 0.02))


def _label_panel(ax: Any, records: list[dict[str, Any]], numbers: dict[str, int],
                 style: dict[str, Any]) -> list[tuple[float, float, str]]:
    """U-shaped sweeps: the label-inference accuracy (Li et al.'s attacks, the best of norm and
    direction) against target accuracy, one point per cell, beside chance."""
    cells = {r["cell"]: r for r in records if (r.get("labels") or {}).get("label_accuracy")
             is not None}
    points = []
    for family, colour in style["colours"].items():
        pts = sorted((r for r in cells.values() if r["family"] == family),
                     key=lambda r: r["strength"])
        if not pts:
            continue
        xs = [r["target_accuracy"] for r in pts]
        ys = [r["labels"]["label_accuracy"] for r in pts]
        if family not in ("none", "combined"):
            ax.plot(xs, ys, "-", color=colour, lw=1, alpha=0.6)
        ax.plot(xs, ys, "o", color=colour, ms=6)
        points += [(x, y, str(numbers[r["cell"]])) for r, x, y in zip(pts, xs, ys, strict=True)]
    chance = [r["labels"].get("chance") for r in cells.values() if r["labels"].get("chance")]
    if chance:
        ax.axhline(max(chance), color="grey", lw=0.8, ls=":")
    ax.fill_between([GOAL_ACCURACY, 1.0], 0, max(chance, default=0.1) + 0.05, color="green",
                    alpha=0.08)
    ax.set_xlabel("target accuracy (utility)")
    ax.set_ylabel("label inference accuracy (u-shaped; dotted: chance)", fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    return points


def short(cell: str) -> str:
    """A cell's key for the plot: ``noise:mechanism=laplace,scale=0.5`` -> ``noise laplace
    scale=0.5``; stacked defences joined by `` + ``."""
    specs = []
    for spec in cell.split(" "):
        if spec.startswith("cut="):
            specs.append(f"@ {spec[4:]}")
            continue
        name, _, params = spec.partition(":")
        words = [v if k == "mechanism" else f"{k}={v}"
                 for k, _, v in (p.partition("=") for p in params.split(",") if p)]
        specs.append(" ".join([name, *words]))
    return " + ".join(s for s in specs if not s.startswith("@")) + "".join(
        f" {s}" for s in specs if s.startswith("@"))


def _legend_and_key(fig: Any, key_ax: Any, records: list[dict[str, Any]],
                    numbers: dict[str, int], style: dict[str, Any]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", ls="-", label=f)
               for f, c in style["colours"].items()]
    handles += [Line2D([], [], color="black", marker=m, ls="", label=a, mfc="none")
                for a, m in style["markers"].items()]
    handles += [Line2D([], [], color="grey", marker="x", ls="", label="strongest w/o weights"),
                Line2D([], [], color="green", alpha=0.3, lw=6, label="goal")]
    key_ax.axis("off")
    key_ax.legend(handles=handles, loc="upper left", fontsize=7, ncol=2, frameon=False,
                  title="colour: defence; marker: strongest rung", title_fontsize=7)
    first = {r["cell"]: r for r in reversed(records)}
    lines = []
    for cell, n in numbers.items():
        eps = run_epsilon_text(first[cell])
        text = short(cell)
        lines.append(f"{n:>2}  {text}" + ("" if eps == "-" else f"  (run eps {eps})"))
    key_ax.text(0.0, 0.66, "\n".join(lines), transform=key_ax.transAxes, va="top",
                family="monospace", fontsize=6.5)


def plot(path: Path, records: list[dict[str, Any]], order: list[str] | None = None) -> None:
    """Write the three-panel plot of ``records`` (sweep records) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r["family"] for r in records})
    cmap = plt.get_cmap("tab10")
    style = {"colours": {f: ("black" if f == "none" else cmap(i % 10))
                         for i, f in enumerate(families)},
             "markers": {a: MARKERS[i % len(MARKERS)]
                         for i, a in enumerate(sorted({r["attack"] for r in records}))}}
    numbers = _numbering(records, order)
    labelled = any((r.get("labels") or {}).get("label_accuracy") is not None for r in records)
    panels = 4 if labelled else 3
    fig = plt.figure(figsize=(17 + 4 * (panels - 3), 5.4))
    grid = fig.add_gridspec(1, panels + 1, width_ratios=[1] * panels + [0.95])
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    points = [_panel(ax, records, metric, numbers, style)
              for ax, (metric, _) in zip(axes, PANELS, strict=True)]
    _decorate(axes, has_reid=bool(points[2]))
    if labelled:
        points.append(_label_panel(fig.add_subplot(grid[0, 3]), records, numbers, style))
        axes.append(fig.axes[-1])
    _legend_and_key(fig, fig.add_subplot(grid[0, panels]), records, numbers, style)
    fig.suptitle("SplitWire: privacy against utility, per defence setting (numbers: the key "
                 "on the right)")
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax, pts in zip(axes, points, strict=True):
        place_labels(ax, pts, renderer)
    fig.savefig(path, dpi=110)
    plt.close(fig)
