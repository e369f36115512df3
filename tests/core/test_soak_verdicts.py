"""The soak's verdicts (bench/soak/verdicts.py) on synthetic series: flat, bounded and growing each get their
verdict, and the issue's targets are checked as documented. No stack."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.soak.verdicts import judge, p99_target, rss_target, window_s

T = np.arange(10.0, 1800.1, 10.0)  # a 30-minute run sampled every 10 s
SPAN = (0.0, 1800.0)


def noise(scale: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, len(T))


def test_flat_series_is_flat() -> None:
    v = judge("rss_mb:gateway", T, 250 + noise(1.5), SPAN)
    assert v.verdict == "flat", v.line()
    assert abs(v.slope_second) < 0.2


def test_warm_up_then_level_is_bounded() -> None:
    warm = 200 + 80 * (1 - np.exp(-T / 150))  # +80 MB over the first minutes, then level
    v = judge("rss_mb:streams", T, warm + noise(1.5), SPAN)
    assert v.verdict == "bounded", v.line()
    assert v.slope_first > v.slope_second


def test_sawtooth_of_trainings_is_bounded() -> None:
    """The trainer's RSS: +400 MB for a minute every five minutes, back down after each training."""
    training = ((T % 300) < 60) * 400.0
    v = judge("rss_mb:trainer", T, 350 + training + noise(3), SPAN)
    assert v.verdict == "bounded", v.line()


def test_steady_leak_is_growing_with_its_slope() -> None:
    v = judge("rss_mb:gateway", T, 250 + 2.0 * T / 60 + noise(3), SPAN)  # 2 MB a minute
    assert v.verdict == "growing", v.line()
    assert v.slope_second == pytest.approx(2.0, rel=0.15)
    assert v.slope_first == pytest.approx(2.0, rel=0.15)


def test_growth_that_starts_late_is_growing() -> None:
    late = np.where(T > 900, (T - 900) / 60 * 3.0, 0.0)  # flat, then 3 MB a minute in the second half
    v = judge("db_mb", T, 40 + late + noise(0.1), SPAN)
    assert v.verdict == "growing", v.line()


def test_a_spike_at_the_end_of_a_noisy_series_is_not_a_trend() -> None:
    y = 120 + noise(25, seed=3)
    y[-3:] += 150  # the last 30 s: one slow training step
    assert judge("ws_p99_ms", T, y, SPAN).verdict == "bounded"


def test_falling_series_is_bounded() -> None:
    v = judge("lag:sightscan-trainer", T, np.maximum(0, 500 - T / 2) + noise(2), SPAN)
    assert v.verdict == "bounded", v.line()


def test_growth_under_the_tolerance_is_flat() -> None:
    v = judge("kafka_log_mb", T, 100 + 0.01 * T / 60, SPAN)  # 0.3 MB over the run: under 2 MB (2%)
    assert v.verdict == "flat", v.line()


def test_too_few_samples() -> None:
    v = judge("lag:late-group", [1700, 1710, 1720], [1, 2, 3], SPAN)
    assert v.verdict == "too few samples"
    assert "too few" in v.line()


def test_a_series_that_appears_late_is_split_over_its_own_span() -> None:
    t = np.arange(1500.0, 1800.1, 10.0)
    v = judge("lag:late-group", t, 5 + 2 * (t - 1500), SPAN)
    assert v.verdict == "growing", v.line()


def test_windows_scale_with_short_runs() -> None:
    assert window_s(30) == 300
    assert window_s(120) == 300
    assert window_s(6) == 60
    assert window_s(12) == 120


def test_rss_target_is_the_highest_sample_above_the_level_after_the_window() -> None:
    y = np.where(T < 300, 150 + T / 10, 180.0)  # warm-up to 180, then level
    y[T == 1500] = 260  # one +80 MB spike: within 100 MB
    met = rss_target("gateway", T, y, 300)
    assert met.met and met.figure == pytest.approx(80)
    y[T == 1600] = 300  # +120 MB: missed
    missed = rss_target("gateway", T, y, 300)
    assert not missed.met and missed.figure == pytest.approx(120)
    assert "MISSED" in missed.line()


def test_rss_target_without_samples_after_the_window_is_missed() -> None:
    target = rss_target("gateway", [10, 20], [100, 100], 300)
    assert not target.met and math.isnan(target.figure)


def test_p99_target_compares_the_last_window_with_the_first() -> None:
    first = [10.0] * 990 + [40.0] * 10  # p99 10 ms: the 40 ms frames are the top 1%
    assert p99_target(first, [10.0] * 1000, 300).met
    assert p99_target(first, [10.0] * 980 + [15.0] * 20, 300).figure == pytest.approx(1.5)
    assert p99_target(first, [10.0] * 980 + [15.0] * 20, 300).met
    assert not p99_target(first, [10.0] * 980 + [16.0] * 20, 300).met
    assert not p99_target([], [10.0], 300).met
