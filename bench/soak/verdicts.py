"""Verdicts on the soak's series, and the issue's targets.

A series is a list of (t seconds, value) samples. Its verdict is one of:

  flat     nothing moved: the spread of the whole series (95th minus 5th percentile) is within its tolerance;
  growing  the second half still rises: a least-squares line fitted to the samples of the second half of the run
           rises by more than the tolerance over that half, and by more than three standard errors of that fit
           (so a spike near the end of a noisy series is not a trend);
  bounded  neither: it moved (a warm-up, a sawtooth, steps up and down) but the second half does not climb.

A series that falls in its second half is bounded. The slopes of lines fitted to the first and the second half are
reported beside the verdict (per minute), so a rise that is slowing down shows as a second slope well under the
first. Fewer than 6 samples (a consumer group that appeared in the last minute): "too few samples".

The tolerance is the larger of an absolute floor and a fraction of the series' median, by kind (the text before
the series name's first ':'); see TOLERANCES. Memory: 10 MB or 3%; CPU: 5 points or 15%; the Kafka log and the
database: 1 MB or 2%; the replication slot's retained WAL: 16 MB (one WAL segment; the slot advances in steps)
or 5%; consumer lag: 20 messages or 10%; websocket latency: 10 ms or 10%; frame rates: 2 frames/s or 10%.

The issue's targets, for a run of T minutes, with a window w = min(5 minutes, T/6) (5 minutes from 30 minutes
on; a 6-minute run has 1-minute windows):
  - each service's RSS stays within 100 MB of its level after the first w: the level is the median of the samples
    in [w, w + max(30 s, w/5)); the figure is the highest sample from w on minus that level (a fall is no breach);
  - the websocket p99 of the last w is within 1.5x the p99 of the first w (every answered frame in each window).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# kind -> (absolute floor, fraction of the median, unit)
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "rss_mb": (10.0, 0.03, "MB"),
    "cpu_pct": (5.0, 0.15, "%"),
    "kafka_log_mb": (1.0, 0.02, "MB"),
    "db_mb": (1.0, 0.02, "MB"),
    "slot_wal_mb": (16.0, 0.05, "MB"),
    "lag": (20.0, 0.10, "messages"),
    "ws_p99_ms": (10.0, 0.10, "ms"),
    "ws_p50_ms": (10.0, 0.10, "ms"),
    "ws_answered_fps": (2.0, 0.10, "frames/s"),
    "ws_dropped_fps": (2.0, 0.10, "frames/s"),
    "host_load1": (0.5, 0.10, ""),
}
DEFAULT_TOLERANCE = (0.0, 0.05, "")
MIN_SAMPLES = 6
RSS_TARGET_MB = 100.0
P99_TARGET_RATIO = 1.5


def kind(series: str) -> str:
    return series.split(":", 1)[0]


def tolerance(series: str, values: Sequence[float]) -> float:
    floor, fraction, _ = TOLERANCES.get(kind(series), DEFAULT_TOLERANCE)
    return max(floor, fraction * abs(float(np.median(values)))) if len(values) else floor


def unit(series: str) -> str:
    return TOLERANCES.get(kind(series), DEFAULT_TOLERANCE)[2]


@dataclass(frozen=True)
class Fit:
    slope: float      # per second
    intercept: float
    stderr: float     # of the slope

    def at(self, t: float) -> float:
        return self.intercept + self.slope * t


def fit(t: Sequence[float], y: Sequence[float]) -> Fit:
    """Least squares y = a + b t, with the standard error of b (0 with fewer than 3 points)."""
    ta, ya = np.asarray(t, float), np.asarray(y, float)
    if len(ta) < 2 or np.ptp(ta) == 0:
        return Fit(0.0, float(ya.mean()) if len(ya) else math.nan, 0.0)
    slope, intercept = np.polyfit(ta, ya, 1)
    sxx = float(((ta - ta.mean()) ** 2).sum())
    residual = ya - (intercept + slope * ta)
    stderr = math.sqrt(float((residual ** 2).sum()) / (len(ta) - 2) / sxx) if len(ta) > 2 else 0.0
    return Fit(float(slope), float(intercept), stderr)


@dataclass(frozen=True)
class Verdict:
    series: str
    verdict: str            # flat | bounded | growing | too few samples
    samples: int
    first: float            # median of the first half
    last: float             # median of the second half
    spread: float           # 95th - 5th percentile of the whole series
    slope_first: float      # per minute, fitted to the first half
    slope_second: float     # per minute, fitted to the second half
    rise_second: float      # the second half's fitted rise over that half
    tolerance: float
    unit: str
    fits: tuple[tuple[float, float, float, float], ...] = ()  # (t0, y0, t1, y1) of each half's line, for plots

    def line(self) -> str:
        if self.verdict == "too few samples":
            return f"{self.series:<30} too few samples ({self.samples})"
        u = f" {self.unit}" if self.unit else ""
        return (f"{self.series:<30} {self.verdict:<8} median {self.first:.4g} -> {self.last:.4g}{u}; slope "
                f"{self.slope_first:+.3g} then {self.slope_second:+.3g}{u}/min; 2nd-half rise "
                f"{self.rise_second:+.3g}{u} (tolerance {self.tolerance:.3g}); spread {self.spread:.3g}{u}")

    def as_json(self) -> dict:
        out = asdict(self)
        out.pop("fits")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def judge(series: str, t: Sequence[float], y: Sequence[float], span: tuple[float, float] | None = None) -> Verdict:
    """The verdict on one series; the halves split `span` (the run: (0, its length); default: the span of `t`)."""
    ta, ya = np.asarray(t, float), np.asarray(y, float)
    keep = np.isfinite(ya)
    ta, ya = ta[keep], ya[keep]
    tol, u = tolerance(series, ya), unit(series)
    if len(ta) < MIN_SAMPLES:
        nan = math.nan
        return Verdict(series, "too few samples", len(ta), nan, nan, nan, nan, nan, nan, tol, u)
    start, end = span if span is not None else (float(ta.min()), float(ta.max()))
    middle = (start + end) / 2
    first, second = ta < middle, ta >= middle
    if first.sum() < 3 or second.sum() < 3:  # a series that appeared late: split its own span
        middle = (float(ta.min()) + float(ta.max())) / 2
        first, second = ta < middle, ta >= middle
        start, end = float(ta.min()), float(ta.max())
    f1, f2 = fit(ta[first], ya[first]), fit(ta[second], ya[second])
    half = end - middle
    rise = f2.slope * half
    spread = float(np.percentile(ya, 95) - np.percentile(ya, 5))
    if rise > tol and rise > 3 * f2.stderr * half:
        verdict = "growing"
    elif spread <= tol:
        verdict = "flat"
    else:
        verdict = "bounded"
    fits = ((start, f1.at(start), middle, f1.at(middle)), (middle, f2.at(middle), end, f2.at(end)))
    return Verdict(series, verdict, len(ta), float(np.median(ya[first])), float(np.median(ya[second])), spread,
                   _zero(f1.slope * 60), _zero(f2.slope * 60), _zero(rise), tol, u, fits)


def _zero(value: float) -> float:
    """A fit's rounding noise on a constant series (1e-15) printed as 0."""
    return 0.0 if abs(value) < 1e-9 else value


# Targets -------------------------------------------------------------------------------------------------------


def window_s(minutes: float) -> float:
    """The first/last window of the targets: 5 minutes, or a sixth of a shorter run than 30 minutes."""
    return min(300.0, minutes * 60 / 6)


@dataclass(frozen=True)
class Target:
    name: str
    figure: float
    limit: float
    met: bool
    text: str

    def line(self) -> str:
        return f"{self.name:<30} {self.text}  {'met' if self.met else 'MISSED'}"


def rss_target(name: str, t: Sequence[float], rss_mb: Sequence[float], window: float) -> Target:
    """RSS within RSS_TARGET_MB of its level after the first `window` seconds (see the module's docstring)."""
    ta, ya = np.asarray(t, float), np.asarray(rss_mb, float)
    keep = np.isfinite(ya)
    ta, ya = ta[keep], ya[keep]
    settle = (ta >= window) & (ta < window + max(30.0, window / 5))
    after = ta >= window
    if not settle.any():
        return Target(f"rss:{name}", math.nan, RSS_TARGET_MB, False, "no samples after the first window")
    level = float(np.median(ya[settle]))
    rise = float(ya[after].max()) - level
    end = float(np.median(ya[ta >= ta.max() - window]))
    return Target(f"rss:{name}", rise, RSS_TARGET_MB, rise <= RSS_TARGET_MB,
                  f"level {level:.0f} MB after {window / 60:.3g} min, highest {rise:+.0f} MB, last {window / 60:.3g} "
                  f"min median {end - level:+.0f} MB (target: <= +{RSS_TARGET_MB:g} MB)")


def p99_target(first: Sequence[float], last: Sequence[float], window: float) -> Target:
    """The websocket p99 (ms) of the last window within P99_TARGET_RATIO x the first's."""
    from bench.stats import percentile

    if not first or not last:
        return Target("ws_p99", math.nan, P99_TARGET_RATIO, False, "no answered frames in a window")
    p_first, p_last = percentile(first, 99), percentile(last, 99)
    ratio = p_last / p_first if p_first > 0 else math.inf
    return Target("ws_p99", ratio, P99_TARGET_RATIO, ratio <= P99_TARGET_RATIO,
                  f"first {window / 60:.3g} min p99 {p_first:.1f} ms ({len(first)} frames), last {window / 60:.3g} min "
                  f"p99 {p_last:.1f} ms ({len(last)} frames): x{ratio:.2f} (target: <= x{P99_TARGET_RATIO:g})")
