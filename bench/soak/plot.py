"""The soak's plot: one small panel per series over the run's minutes, titled with its verdict (green flat, blue
bounded, red growing), with the lines fitted to each half dashed and the targets' first and last windows shaded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.soak.verdicts import Verdict

COLOURS = {"flat": "tab:green", "bounded": "tab:blue", "growing": "tab:red"}


def draw(path: Path, series: Mapping[str, Sequence[tuple[float, float]]], verdicts: Mapping[str, Verdict],
         length_s: float, window: float, title: str, columns: int = 4) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(series)
    rows = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        points = series[name]
        ax.plot([t / 60 for t, _ in points], [v for _, v in points], lw=1, color="0.2")
        verdict = verdicts.get(name)
        label = name
        if verdict is not None:
            label += f"\n{verdict.verdict}"
            if verdict.verdict in COLOURS:
                label += f", {verdict.slope_second:+.3g} {verdict.unit}/min in the 2nd half"
            for t0, y0, t1, y1 in verdict.fits:
                ax.plot([t0 / 60, t1 / 60], [y0, y1], ls="--", lw=1.2, color=COLOURS.get(verdict.verdict, "0.5"))
        ax.set_title(label, fontsize=8, color=COLOURS.get(verdict.verdict if verdict else "", "black"))
        ax.axvspan(0, window / 60, color="0.92", zorder=0)
        ax.axvspan((length_s - window) / 60, length_s / 60, color="0.92", zorder=0)
        ax.set_xlim(0, length_s / 60)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("minutes", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
