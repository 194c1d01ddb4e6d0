"""How wrong are over_slo and p99 when read from vLLM's TTFT histogram? A measurement, not a timing.

For each SLO, lognormal latencies are drawn with the tenant's true p99 at a given multiple of its
SLO (0.8: healthy, 1.0: on the edge, 1.5: violating), binned into vLLM's TTFT buckets
(fsm.histogram.VLLM_TTFT_BUCKETS) and read back through the live sampler's estimator
(fsm.histogram.window_from_buckets). Compared with the exact figures of the same samples:

- bias: one window of 1,000,000 requests (sampling noise gone: what is left is the interpolation);
- per-window error: 2,000 windows of 100 requests (a 2 s tick at 50 requests/s), the mean absolute
  error of over_slo in requests, and how often the window's verdict (p99 > SLO) differs.

Run: .venv/bin/python -m bench.over_slo_error [--sigma 0.5] [--seed 1]
The figures are in docs/decisions.md ("What the controller sees of latency").
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from fsm.histogram import VLLM_TTFT_BUCKETS, tail_fraction, window_from_buckets

SLOS_S = (0.015, 0.1, 0.2, 0.5, 1.0)
P99_OVER_SLO = (0.8, 1.0, 1.5)
Z99 = 2.3263478740408408  # standard normal 0.99 quantile
BOUNDS = np.asarray(VLLM_TTFT_BUCKETS)


def _window(x: np.ndarray, slo: float) -> tuple[float, float, float, float]:
    """(exact over, estimated over, exact p99, estimated p99) of one window."""
    xs = np.sort(x)
    cum = np.searchsorted(xs, BOUNDS, "right").tolist()
    w = window_from_buckets([*zip(VLLM_TTFT_BUCKETS, cum, strict=True), (math.inf, xs.size)], slo)
    exact_over = float(xs.size - np.searchsorted(xs, slo, "right"))
    assert w.over_slo is not None and w.p99 is not None
    return exact_over, w.over_slo, float(np.quantile(xs, 0.99)), w.p99


def fitted_over(x: np.ndarray, slo: float) -> float:
    """Requests over the SLO as the evidence reads them: the bucket's share above the SLO from the
    tail's fitted decay (fsm.histogram.tail_fraction), on the whole sample's counts."""
    xs = np.sort(x)
    cum = np.searchsorted(xs, BOUNDS, "right").tolist()
    win = window_from_buckets([*zip(VLLM_TTFT_BUCKETS, cum, strict=True), (math.inf, xs.size)], slo)
    if win.over_slo_range is None or win.over_slo_bucket is None:
        return float(win.over_slo or 0.0)
    certain, possible = win.over_slo_range
    lo, hi = win.over_slo_bucket
    return certain + (possible - certain) * tail_fraction(possible, certain, (slo - lo) / (hi - lo))


def measure(slo: float, ratio: float, sigma: float, rng: np.random.Generator) -> dict[str, float]:
    mu = math.log(ratio * slo) - Z99 * sigma  # true p99 = ratio x SLO
    big = rng.lognormal(mu, sigma, 1_000_000)
    eo, so, ep, sp = _window(big, slo)
    errs, flips = [], 0
    for _ in range(2000):
        e, s, p, q = _window(rng.lognormal(mu, sigma, 100), slo)
        errs.append(abs(s - e))
        flips += (p > slo) != (q > slo)
    return {
        "true_over_pct": 100 * eo / big.size,
        "est_over_pct": 100 * so / big.size,
        "fit_over_pct": 100 * fitted_over(big, slo) / big.size,
        "p99_ms": 1000 * ep,
        "est_p99_ms": 1000 * sp,
        "mae_over_100": float(np.mean(errs)),
        "verdict_flips_pct": 100 * flips / 2000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, default=0.5, help="lognormal sigma (shape) of the latencies")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"lognormal sigma {args.sigma}, seed {args.seed}; vLLM TTFT buckets")
    print(
        "| SLO ms | true p99 / SLO | over SLO, exact | over SLO, from buckets (linear) | over SLO, fitted tail "
        "| p99 ms exact | p99 ms from buckets "
        "| mean abs. error of over_slo, 100-request windows | windows whose verdict flips |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for slo in SLOS_S:
        for ratio in P99_OVER_SLO:
            m = measure(slo, ratio, args.sigma, rng)
            print(
                f"| {1000 * slo:g} | {ratio:g} | {m['true_over_pct']:.2f}% | {m['est_over_pct']:.2f}% "
                f"| {m['fit_over_pct']:.2f}% "
                f"| {m['p99_ms']:.1f} | {m['est_p99_ms']:.1f} | {m['mae_over_100']:.2f} "
                f"| {m['verdict_flips_pct']:.1f}% |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
