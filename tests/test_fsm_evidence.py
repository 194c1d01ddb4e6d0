"""fsm.evidence: the sequential test on requests over the SLO (see its docstring)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.evidence import EvidenceParams, SloEvidence, llr_weights, over_slo, share_from_quantiles, update
from fsm.observation import LatencyWindow
from fsm.quantiles import Verdict

P = EvidenceParams()


def feed(ticks, ev=None, p=P, slo=1.0, dt=2.0):
    """ticks: (n, bad) per tick; returns the final evidence and the verdicts."""
    ev = ev or SloEvidence()
    out = []
    for i, (n, b) in enumerate(ticks):
        ev, j = update(ev, LatencyWindow(n, over_slo=b), 0.99, slo, p, i * dt)
        out.append(j.verdict)
    return ev, out


def test_thresholds_are_the_stated_false_alarm_levels():
    assert math.isclose(P.h, math.log(1e4))
    assert math.isclose(P.release_h, math.log(5))
    w_bad, w_good = llr_weights(0.01, 4.0)
    assert math.isclose(w_bad, math.log(4)) and math.isclose(w_good, math.log(0.96 / 0.99))


def test_a_strong_violation_at_a_high_rate_triggers_after_the_minimum_ticks():
    _, v = feed([(400, 200)] * 5)
    assert v[:2] == [Verdict.BETWEEN, Verdict.BETWEEN] and v[2] is Verdict.VIOLATING


def test_a_handful_of_requests_never_triggers():
    # six requests, every one over the SLO, spread over many ticks: 6 x ln 4 < ln 1e4
    _, v = feed([(1, 1)] * 6 + [(0, 0)] * 20)
    assert Verdict.VIOLATING not in v


def test_a_low_rate_tenant_is_still_judged():
    # 0.2 requests/s, half of them over the SLO: a request every 5 s, a bad one every 10 s
    ticks = [(1, 1.0 if k % 4 == 0 else 0.0) if k % 2 == 0 else (0, 0.0) for k in range(200)]
    _, v = feed(ticks)
    first = v.index(Verdict.VIOLATING)
    assert 20 <= first * 2.0 <= 200  # judged within minutes, not never


def test_meeting_the_slo_releases_and_violating_does_not():
    _, v = feed([(400, 0)] * 10)
    assert v[4] is Verdict.GOOD and v[3] is not Verdict.GOOD and Verdict.VIOLATING not in v
    _, v = feed([(400, 8)] * 50)  # 2% bad: between the hypotheses, far from a release
    assert Verdict.GOOD not in v


def test_no_data_holds_the_evidence_and_reset_clears_it():
    ev, _ = feed([(400, 100)] * 2)
    held, j = update(ev, None, 0.99, 1.0, P, 10.0)
    assert j.verdict is Verdict.EMPTY and held.up == ev.up > 0
    assert held.reset().up == 0 and held.reset().n_recent == held.n_recent


def test_counts_come_from_samples_when_the_source_has_no_count():
    w = LatencyWindow(4, samples=(0.1, 0.2, 1.5, 2.0))
    assert over_slo(w, 1.0) == 2.0
    assert over_slo(LatencyWindow(3, over_slo=7.0), 1.0) == 3.0  # never more than the window holds


def test_windows_without_counts_keep_the_reference_rule():
    # p99 over the SLO in Y=3 consecutive windows of >= min_window_count requests triggers
    ev, verdicts = SloEvidence(), []
    for i in range(3):
        ev, j = update(ev, LatencyWindow(50, 0.5, 1.2, 1.5), 0.99, 1.0, P, 2.0 * i)
        verdicts.append(j.verdict)
    assert verdicts == [Verdict.BETWEEN, Verdict.BETWEEN, Verdict.VIOLATING]
    # a window in between resets, a window with too few requests counts neither way
    ev2, j = update(ev.reset(), LatencyWindow(50, 0.5, 1.2, 1.5), 0.99, 1.0, P, 10.0)
    ev2, j = update(ev2, LatencyWindow(50, 0.5, 0.9, 1.5), 0.99, 1.0, P, 12.0)
    assert ev2.up == 0.0
    ev3, j = update(ev2, LatencyWindow(2, 0.5, 3.0, 3.0), 0.99, 1.0, P, 14.0)
    assert j.verdict is Verdict.EMPTY and ev3.up == 0.0


def test_share_from_quantiles_brackets_the_slo():
    w = LatencyWindow(100, 0.01, 0.1, 1.0)
    assert share_from_quantiles(w, 0.005) == 0.5
    assert math.isclose(share_from_quantiles(w, 0.1), 0.01)
    assert 0.001 < share_from_quantiles(w, 0.5) < 0.01
    assert math.isclose(share_from_quantiles(w, 2.0), 0.0005)
    assert share_from_quantiles(LatencyWindow(0), 1.0) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.floats(0, 1)), min_size=1, max_size=40))
def test_evidence_stays_finite_non_negative_and_bounded_per_tick(ticks):
    ev = SloEvidence()
    for i, (n, frac) in enumerate(ticks):
        before = ev
        ev, _ = update(ev, LatencyWindow(n, over_slo=n * frac), 0.99, 1.0, P, 2.0 * i)
        assert 0.0 <= ev.up <= before.up + P.h / P.min_ticks + 1e-9
        assert 0.0 <= ev.down <= before.down + P.release_h / P.min_release_ticks + 1e-9
        assert math.isfinite(ev.n_recent) and 0.0 <= ev.b_recent <= ev.n_recent + 1e-9


def test_false_alarms_at_the_budget_are_rare():
    """p exactly at the budget (the worst case for false alarms), 20 requests/s for one day:
    bench/bench_evidence.py measured 0-1.5 a day over the rates it tries; allow a few."""
    rng = np.random.default_rng(7)
    ticks = 43200
    n = rng.poisson(40, ticks)
    b = rng.binomial(n, 0.01)
    ev, alarms = SloEvidence(), 0
    for i in range(ticks):
        ev, j = update(ev, LatencyWindow(int(n[i]), over_slo=float(b[i])), 0.99, 1.0, P, 2.0 * i)
        if j.verdict is Verdict.VIOLATING:
            alarms += 1
            ev = ev.reset()
    assert alarms <= 4


# -- inside a histogram bucket: the tail's shape (fsm.histogram.tail_fraction) ---------------------


def test_tail_fraction_is_exact_for_an_exponential_tail():
    from fsm.histogram import tail_fraction

    lo, hi, theta, n = 0.1, 0.25, 0.05, 1e9
    s = lambda x: n * math.exp(-x / theta)  # noqa: E731  survival counts
    for slo in (0.11, 0.15, 0.2, 0.24):
        in_bucket = s(lo) - s(hi)
        want = (s(slo) - s(hi)) / in_bucket
        assert math.isclose(tail_fraction(s(lo), s(hi), (slo - lo) / (hi - lo)), want, rel_tol=1e-6)


def test_tail_fraction_edges():
    from fsm.histogram import tail_fraction

    assert tail_fraction(10.0, 0.0, 0.0) == 1.0 and tail_fraction(10.0, 0.0, 1.0) == 0.0
    assert tail_fraction(0.0, 0.0, 0.5) == 0.5  # nothing seen: even spread
    assert 0.0 < tail_fraction(3.0, 0.0, 0.5) < 0.5  # a thin bucket with nothing above it


def _vllm_window(x, slo):
    from fsm.histogram import VLLM_TTFT_BUCKETS, window_from_buckets

    xs = np.sort(x)
    cum = np.searchsorted(xs, np.asarray(VLLM_TTFT_BUCKETS), "right").tolist()
    return window_from_buckets([*zip(VLLM_TTFT_BUCKETS, cum, strict=True), (math.inf, xs.size)], slo)


def test_the_window_names_the_bucket_the_slo_falls_in():
    w = _vllm_window(np.array([0.05, 0.15, 0.3]), 0.2)
    assert w.over_slo_bucket == (0.1, 0.25) and w.over_slo_range == (1.0, 2.0)
    assert _vllm_window(np.array([0.05, 0.15, 0.3]), 0.25).over_slo_bucket is None  # on a bound: exact


def _judge_lognormal(p99_over_slo, slo, ticks=1500, n=100, sigma=0.5, seed=1):
    rng = np.random.default_rng(seed)
    mu = math.log(p99_over_slo * slo) - 2.3263478740408408 * sigma
    ev, verdicts = SloEvidence(), []
    for i in range(ticks):
        ev, j = update(ev, _vllm_window(rng.lognormal(mu, sigma, n), slo), 0.99, slo, P, i * 2.0)
        verdicts.append(j.verdict)
    return ev, verdicts


def test_a_healthy_tail_inside_a_bucket_never_looks_violating():
    # True p99 at 0.8 x a 200 ms SLO (0.28% over it): linear interpolation reads 2.8%, ten times
    # the truth; the fitted tail reads about 0.33% (docs/decisions.md), so 150,000 requests never
    # trigger and the tail is released.
    ev, v = _judge_lognormal(0.8, 0.2)
    assert Verdict.VIOLATING not in v and Verdict.GOOD in v
    assert ev.bad_share() < 0.01


def test_a_violating_tail_inside_a_bucket_is_seen():
    # True p99 at 1.5 x the SLO (6.5% over it); the certain count alone (over 250 ms) reads 2.5%.
    ev, v = _judge_lognormal(1.5, 0.2, ticks=60)
    assert Verdict.VIOLATING in v
    assert 0.04 < ev.bad_share() < 0.10


def test_the_change_point_is_when_the_evidence_began_to_grow():
    ev, _ = feed([(400, 0)] * 5 + [(400, 100)] * 3)
    assert ev.up_since == 5 * 2.0 and ev.up_n == 3 * 400 and ev.up_bad == 3 * 100
    assert ev.reset().up_since is None and ev.reset().up_n == 0
