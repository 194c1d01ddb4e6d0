"""The latency estimator for cumulative (classic Prometheus) histograms, shared by the live
Prometheus latency sampler and the simulator's exported histogram, so the controller sees the same
kind of window in replay as it does live.

Quantiles follow PromQL `histogram_quantile` for classic buckets, as documented in the Prometheus
query functions reference (prometheus.io/docs/prometheus/latest/querying/functions): the highest
bucket must be `+Inf` (else no result); a quantile that falls into the `+Inf` bucket returns the
upper bound of the second-highest bucket; the lowest bucket is assumed to start at 0 when its upper
bound is positive (else its upper bound is returned); bucket counts that are not monotonic are
raised to the running maximum; no observations -> no result.

`over_threshold` is the same interpolation read the other way: the number of observations above a
threshold (the tenant's SLO), assuming observations spread evenly inside the bucket the threshold
falls in. On a bucket boundary it is exact. A latency tail is not even inside a bucket: it thins
out towards the upper bound, so the even spread overstates the count (a healthy p99 at 0.8 x a
200 ms SLO reads as 2.8% over it instead of 0.3%). `tail_fraction` instead interpolates the
survival function geometrically between the two bounds (an exponential tail across the bucket),
fitted from how many observations lie above each bound; the evidence uses it (fsm.evidence).

Pure: no numpy, no I/O (fsm/).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fsm.observation import LatencyWindow

Buckets = Sequence[tuple[float, float]]  # (le, cumulative count), any order

# vLLM's `vllm:time_to_first_token_seconds` bucket upper bounds (seconds; +Inf is implicit), from
# vllm/v1/metrics/loggers.py, PrometheusStatLogger.__init__, vllm-project/vllm commit
# 005a810bc40faa25b8870fbc8559c3462581eee3. The v0 engine (vllm/engine/metrics.py) starts with the
# same 0.001 ... 0.1 bounds (see tests/fixtures/vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom).
VLLM_TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


def monotonic(buckets: Buckets) -> list[tuple[float, float]] | None:
    """Sorted buckets with counts raised to the running maximum; None when PromQL gives no result
    (fewer than two buckets, no +Inf bucket, or a NaN count)."""
    bs = sorted(buckets)
    if len(bs) < 2 or not math.isinf(bs[-1][0]) or bs[-1][0] < 0:
        return None
    out: list[tuple[float, float]] = []
    run = 0.0
    for le, c in bs:
        if math.isnan(c):
            return None
        run = max(run, c)
        out.append((le, run))
    return out


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """PromQL histogram_quantile over cumulative classic buckets; None where PromQL gives NaN."""
    return histogram_quantiles((q,), buckets)[0]


def histogram_quantiles(qs: Sequence[float], buckets: Buckets) -> list[float | None]:
    """Several quantiles of one histogram (the buckets are checked and made monotonic once)."""
    mono = monotonic(buckets)
    return [_quantile(q, mono) for q in qs]


def _quantile(q: float, mono: list[tuple[float, float]] | None) -> float | None:
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if mono is None:
        return None
    observations = mono[-1][1]
    if observations <= 0:
        return None
    rank = q * observations
    b = next(i for i, (_, c) in enumerate(mono) if c >= rank)
    if b == len(mono) - 1:
        return mono[-2][0]
    if b == 0 and mono[0][0] <= 0:
        return mono[0][0]
    start = 0.0
    end = mono[b][0]
    count = mono[b][1]
    if b > 0:
        start = mono[b - 1][0]
        count -= mono[b - 1][1]
        rank -= mono[b - 1][1]
    if count <= 0:
        return end
    return start + (end - start) * (rank / count)


def over_threshold(threshold: float, buckets: Buckets) -> float | None:
    """Observations above `threshold`, by linear interpolation inside the bucket it falls in (the
    lowest bucket starts at 0 when its bound is positive, as histogram_quantile assumes). Above the
    highest finite bound nothing can be interpolated: the +Inf bucket's observations count as over.
    None when the histogram gives no result or the threshold is not a finite number."""
    mono = monotonic(buckets)
    if mono is None or math.isnan(threshold) or math.isinf(threshold):
        return None
    return _over(threshold, mono)


def _over(threshold: float, mono: list[tuple[float, float]]) -> float:
    total = mono[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for i, (le, c) in enumerate(mono):
        if threshold <= le and not math.isinf(le):
            if threshold == le:
                below = c
            elif i == 0 and le <= 0:
                below = 0.0  # a threshold under a non-positive lowest bound: nothing known below it
            else:
                lo = prev_le if i > 0 else 0.0
                frac = (threshold - lo) / (le - lo) if le > lo else 1.0
                below = prev_c + (c - prev_c) * max(0.0, frac)
            return min(total, max(0.0, total - below))
        prev_le, prev_c = le, c
    # Past the highest finite bound: everything in the +Inf bucket is over.
    return max(0.0, total - mono[-2][1])


def tail_fraction(above_lo: float, above_hi: float, position: float) -> float:
    """The share of a bucket's observations above a threshold at `position` (0: the lower bound,
    1: the upper) when the survival function decays geometrically across the bucket: S(x) falls
    from `above_lo` observations at the lower bound to `above_hi` at the upper one, so
    S(lo + u (hi - lo)) = above_lo x r^u with r = above_hi / above_lo. Half an observation is added
    to both (a bucket with nothing above it is thin, not empty). Linear interpolation assumes an
    even spread instead and overstates the share for a thinning tail: measured in
    docs/decisions.md ("What the controller sees of latency")."""
    u = min(1.0, max(0.0, position))
    r = (above_hi + 0.5) / (above_lo + 0.5)
    if r >= 1.0 - 1e-12:
        return 1.0 - u  # as many above the upper bound as above the lower: nothing to fit, spread evenly
    return max(0.0, min(1.0, (r**u - r) / (1.0 - r)))


def slo_bucket(slo_s: float, bounds: Sequence[float]) -> tuple[float, float] | None:
    """The bucket (lower, upper bound; the lowest starts at 0) a threshold falls strictly inside,
    among a histogram's finite upper bounds; None on a bound or above the last finite one. There the
    share over it is estimated (tail_fraction), not counted."""
    lo = 0.0
    for le in sorted(b for b in bounds if math.isfinite(b)):
        if le == slo_s:
            return None
        if le > slo_s:
            return (lo, le)
        lo = le
    return None


def window_from_buckets(buckets: Buckets, slo_s: float | None = None) -> LatencyWindow:
    """A window as the live Prometheus sampler makes it: the count from the +Inf bucket, p50 / p99
    / p999 by histogram_quantile, and `over_slo` interpolated at the SLO (None without an SLO)."""
    bs = sorted(buckets)
    n = bs[-1][1] if bs and math.isinf(bs[-1][0]) and not math.isnan(bs[-1][1]) else 0.0
    count = max(0, round(n))
    if count == 0:
        return LatencyWindow(count=0, over_slo=0.0 if slo_s is not None else None)
    mono = monotonic(bs)
    if mono is None:  # a lone +Inf bucket: a count, nothing else
        return LatencyWindow(count=count)
    p50, p99, p999 = (_quantile(q, mono) for q in (0.5, 0.99, 0.999))
    if slo_s is None or not math.isfinite(slo_s):
        return LatencyWindow(count=count, p50=p50, p99=p99, p999=p999)
    around = _around(slo_s, mono)
    return LatencyWindow(
        count=count,
        p50=p50,
        p99=p99,
        p999=p999,
        over_slo=_over(slo_s, mono),
        over_slo_range=around[0] if around is not None else None,
        over_slo_bucket=around[1] if around is not None else None,
    )


def _around(
    threshold: float, mono: list[tuple[float, float]]
) -> tuple[tuple[float, float], tuple[float, float] | None] | None:
    """For a threshold inside a bucket: (observations certainly above it, observations possibly
    above it), counted above the bucket bounds on either side of it; and those bounds (the lowest
    bucket starts at 0; None when the upper one is +Inf). None when the threshold is a bound (the
    count is exact)."""
    total = mono[-1][1]
    lo, below_lo = 0.0, 0.0  # the bound under the threshold and the cumulative count there
    hi, below_hi = None, None  # ... and over it
    for le, c in mono:
        if le == threshold:
            return None
        if le < threshold:
            lo, below_lo = le, c
        elif below_hi is None:
            hi, below_hi = le, c
    certain = total - below_hi if below_hi is not None else 0.0
    bucket = (lo, hi) if hi is not None and not math.isinf(hi) and hi > lo else None
    return (max(0.0, certain), max(0.0, total - below_lo)), bucket
