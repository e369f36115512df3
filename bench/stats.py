"""Percentiles and a uniform way to print benchmark figures."""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Sequence


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from `timeout`) into SystemExit, so a benchmark's finally tears its private stack down."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2) if ms else math.nan}


def report(name: str, figures: dict) -> None:
    print(f"\n== {name}")
    for key, value in figures.items():
        print(f"  {key:<28} {value}")
    print("JSON " + json.dumps({"bench": name, **figures}))


def median_spread(values: Sequence[float], unit: str = "", digits: int = 1) -> str:
    """'median M (min A, max B over n runs)': what a repeated figure prints, so its noise is visible."""
    if not values:
        return "no runs"
    ordered = sorted(values)
    return (f"median {median(values):.{digits}f}{unit} (min {ordered[0]:.{digits}f}, max {ordered[-1]:.{digits}f} "
            f"over {len(ordered)} runs)")


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return math.nan if not n else ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def machine_note() -> str:
    """What the machine was doing: CPUs and load average, printed beside figures that depend on it."""
    import os

    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}/{os.getloadavg()[1]:.2f} (1/5 min)"
