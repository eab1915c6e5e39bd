"""What a run leaves behind: the summary table, results.json and reconstructions.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from actors.api import LabReport  # noqa: E402
from actors.lab import RunResult  # noqa: E402


def sample_indices(labels: np.ndarray, per_class: int = 1, most: int = 10) -> list[int]:
    """The first ``per_class`` test images of each class (at most ``most`` classes), so every
    row of the figure shows the same, distinct classes."""
    out: list[int] = []
    for label in np.unique(labels)[:most]:
        out.extend(int(i) for i in np.flatnonzero(labels == label)[:per_class])
    return out


def _show(ax: Any, image: np.ndarray) -> None:
    """One (C, H, W) image: grayscale for one channel, in colour for three."""
    img = np.clip(np.asarray(image, np.float32), 0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.moveaxis(img[:3], 0, -1))
    ax.set_xticks([])
    ax.set_yticks([])


def table(runs: list[RunResult]) -> str:
    head = (f"{'protocol':<14}{'adversary':<19}{'attack':<15}{'aux':<15}{'target acc':>11}"
            f"{'SSIM':>8}{'PSNR dB':>9}{'validator':>11}{'re-id@1':>9}{'+re-id':>8}"
            f"{'frames':>9}{'MB':>9}{'dropped':>9}{'s':>7}")
    lines = [head, "-" * len(head)]
    for r in runs:
        reid, gain = _reid(r)
        lines.append(
            f"{r.protocol:<14}{r.adversary:<19}{r.attack_method:<15}{r.aux:<15}"
            f"{r.target_accuracy:>11.1%}"
            f"{r.attack.ssim:>8.3f}{r.attack.psnr:>9.2f}{r.attack.validator_accuracy:>11.1%}"
            f"{reid:>9}{gain:>8}"
            f"{r.wire.frames:>9d}{r.wire.bytes / 1e6:>9.1f}{sum(r.wire.dropped.values()):>9d}"
            f"{r.seconds:>7.1f}"
        )
    if runs and runs[0].instance:
        n = runs[0].instance["reid"]["n"]
        lines.append(f"re-id@1: reconstructions whose nearest private image (pixels or the "
                     f"validator's features) is their own, of N = {n} (chance {1 / n:.1%}); "
                     "+re-id: points above the label-only baseline (the class-mean image)")
    lines += label_lines(runs)
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def label_lines(runs: list[RunResult]) -> list[str]:
    """What each adversary infers of the training labels (once per protocol and adversary)."""
    seen, out = set(), []
    for r in runs:
        leak = r.label_leak
        if not leak or (r.protocol, r.adversary) in seen:
            continue
        seen.add((r.protocol, r.adversary))
        if not out:
            out.append(f"labels ({r.topology}): {'protocol':<14}{'adversary':<19}"
                       f"{'norm AUC':>9}{'cos AUC':>9}{'label acc':>10}{'chance':>8}  via")
        out.append(f"{'':<{len(r.topology) + 11}}{r.protocol:<14}{r.adversary:<19}"
                   f"{_num(leak.get('norm_auc')):>9}{_num(leak.get('cosine_auc')):>9}"
                   f"{_pct(leak.get('label_accuracy')):>10}{_pct(leak.get('chance')):>8}  "
                   f"{leak.get('via', '-')}")
    return out


def _reid(r: RunResult) -> tuple[str, str]:
    if not r.instance:
        return "-", "-"
    top = max(v for k, v in r.instance["reid"].items() if k.endswith("_top1") and v is not None
              and not k.startswith("chance"))
    gain = r.instance["excess"].get("reid_top1_gain")
    return f"{top:.1%}", ("-" if gain is None else f"{100 * gain:+.1f}")


def write_json(path: Path, lab: LabReport) -> None:
    """``results.json``: the stable schema (fields may be added, none removed or renamed)."""
    path.write_text(json.dumps(lab.to_json(), indent=2, sort_keys=False) + "\n")


def write_figure(path: Path, runs: list[RunResult]) -> None:
    """Originals on top, then one row of reconstructions per run, captioned with its scores."""
    labels, originals = runs[0].labels, runs[0].originals
    idx = sample_indices(labels)
    rows = 1 + len(runs)
    fig, axes = plt.subplots(rows, len(idx), figsize=(len(idx) * 0.9, rows * 1.15 + 0.3),
                             squeeze=False)
    captions = ["private test images (never sent)"] + [
        f"{r.protocol} / {r.adversary} / {r.attack_method} / aux={r.aux}"
        f"{' / ' + ' '.join(r.defences) if r.defences else ''}: SSIM {r.attack.ssim:.2f}, "
        f"validator {r.attack.validator_accuracy:.0%}, target acc {r.target_accuracy:.1%}"
        for r in runs
    ]
    images = [originals] + [r.reconstructions for r in runs]
    for row, (imgs, caption) in enumerate(zip(images, captions, strict=True)):
        for col, i in enumerate(idx):
            _show(axes[row][col], imgs[i])
        axes[row][0].set_title(caption, loc="left", fontsize=8, x=0.0)
    fig.suptitle("SplitWire: what the adversary rebuilds from the wire", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / fig.get_figheight(),
                        hspace=0.45, wspace=0.05)
    fig.savefig(path, dpi=110)
    plt.close(fig)
