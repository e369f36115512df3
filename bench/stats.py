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
