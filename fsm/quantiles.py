"""Latency windows: quantiles of raw samples and the per-window verdict the ladder counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from fsm.observation import LatencyWindow


def quantile(samples: Sequence[float], q: float) -> float | None:
    """Quantile with linear interpolation between closest ranks (numpy's default, type 7)."""
    n = len(samples)
    if n == 0:
        return None
    xs = sorted(samples)
    if n == 1:
        return float(xs[0])
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(xs[lo] + (xs[hi] - xs[lo]) * frac)


def window_from_samples(samples: Sequence[float]) -> LatencyWindow:
    return LatencyWindow(
        count=len(samples),
        p50=quantile(samples, 0.5),
        p99=quantile(samples, 0.99),
        p999=quantile(samples, 0.999),
    )


class Verdict(StrEnum):
    VIOLATING = "violating"  # quantile above the SLO
    GOOD = "good"  # below release_ratio x SLO
    BETWEEN = "between"  # neither: resets both counters' streaks only where it must
    EMPTY = "empty"  # too few requests or no data: counts neither way


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    verdict: Verdict
    value: float | None  # the quantile (s)
    count: int


def judge(window: LatencyWindow | None, q: float, slo_s: float, release_ratio: float, min_count: int) -> WindowVerdict:
    if window is None or window.count < min_count or window.count <= 0:
        return WindowVerdict(Verdict.EMPTY, None, 0 if window is None else window.count)
    value = window.quantile(q)
    return WindowVerdict(verdict_of(value, window.count, slo_s, release_ratio, min_count), value, window.count)


def verdict_of(value: float | None, count: int, slo_s: float, release_ratio: float, min_count: int) -> Verdict:
    """judge()'s verdict on a window whose quantile is `value` (None: unknown) of `count` requests;
    one without requests is empty whatever it reports."""
    if count < min_count or count <= 0 or value is None:
        return Verdict.EMPTY
    if value > slo_s:
        return Verdict.VIOLATING
    if value < release_ratio * slo_s:
        return Verdict.GOOD
    return Verdict.BETWEEN
