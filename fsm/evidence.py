"""SLO evidence from requests: a sequential test on the share of requests over the SLO.

A p-quantile SLO (p99: q = 0.99) allows a share eps = 1 - q of the requests over the SLO: that is
the error budget. Each tick brings n completed requests, b of them over the SLO (exact where the
source has raw latencies or counts, interpolated from histogram buckets otherwise). The judge
weighs two hypotheses about the current bad share p:

    H0: p = eps                  (at the budget: it burns at rate 1)
    H1: p = burn x eps           (violating: the budget burns `burn` times too fast)
    H2: p = release_burn x eps   (comfortably within it)

with two one-sided CUSUMs (Page's test) of the Bernoulli log-likelihood ratio, in nats:

    up   <- max(0, up   + b ln(p1/p0) + (n-b) ln((1-p1)/(1-p0)))    evidence of H1 against H0
    down <- max(0, down + b ln(p2/p0) + (n-b) ln((1-p2)/(1-p0)))    evidence of H2 against H0

VIOLATING when `up` reaches h = ln(1/alpha); GOOD when `down` reaches ln(1/release_alpha). The
evidence is counted in requests, not windows: at 200 requests/s a strong violation crosses h in a
tick or two, at 0.2 requests/s the same violation takes about a minute, and a handful of requests
never does (h / ln(burn) requests over the SLO at the very least: 14 with the defaults). One tick
adds at most h / min_ticks (and release_h / min_release_ticks) so that a single burst tick, whose
requests queue together and are not independent, never decides alone.

Counts estimated inside a histogram bucket (vLLM's TTFT buckets are fixed) are only known between
the requests certainly over the SLO (above the next bound up) and those possibly over it (above the
next bound down). The bucket's share above the SLO is then estimated by fitting the tail's decay
across the bucket (fsm.histogram.tail_fraction) to the recent counts above each bound (time
constant `fit_tau_s`, longer than a tick so that a few requests do not make the shape): unbiased
for an exponential tail, within about 20% of the true share near the budget for lognormal ones
(docs/decisions.md), where the even spread of linear interpolation reads a healthy 200 ms SLO as
ten times over budget and the certain count alone reads a violating one as healthy.

A source that gives quantiles but no counts falls back to the per-window verdict of
fsm.quantiles.judge (today's reference trigger): a violating window adds h / min_ticks, a good one
adds release_h / min_release_ticks, a window in between resets both. That is the old "Y violating
windows" rule as a special case.

Measured false-alarm rates and detection delays: docs/decisions.md ("Evidence") and
tests/test_fsm_evidence.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fsm.evolve import field_setters
from fsm.histogram import tail_fraction
from fsm.observation import LatencyWindow
from fsm.quantiles import Verdict, verdict_of
from fsm.spec import Policy


@dataclass(frozen=True, slots=True)
class EvidenceParams:
    burn: float = 2.0  # H1's burn rate (bad share / budget)
    alpha: float = 1e-4  # trigger threshold h = ln(1/alpha)
    release_burn: float = 0.25  # H2's burn rate: a tail comfortably within its SLO
    release_alpha: float = 0.2  # release threshold ln(1/release_alpha)
    min_ticks: int = 3  # ticks of evidence a trigger needs at least (the reference design's Y)
    min_release_ticks: int = 5  # ... and a release (Z)
    rate_tau_s: float = 60.0  # time constant of the request rate and recent bad share estimates
    fit_tau_s: float = 600.0  # time constant of the tail's shape inside the SLO's histogram bucket
    release_ratio: float = 0.8  # legacy windows: good = quantile < release_ratio x SLO
    min_window_count: int = 5  # legacy windows with fewer requests count neither way
    # Derived once here (update() reads them for every sensitive tenant and tick): h, release_h,
    # and the most one tick may add to each. No part of the value.
    _h: float = field(init=False, repr=False, compare=False)
    _release_h: float = field(init=False, repr=False, compare=False)
    _step_up: float = field(init=False, repr=False, compare=False)
    _step_down: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        h, release_h = math.log(1.0 / self.alpha), math.log(1.0 / self.release_alpha)
        object.__setattr__(self, "_h", h)
        object.__setattr__(self, "_release_h", release_h)
        object.__setattr__(self, "_step_up", h / max(1, self.min_ticks))
        object.__setattr__(self, "_step_down", release_h / max(1, self.min_release_ticks))

    @property
    def h(self) -> float:
        return self._h

    @property
    def release_h(self) -> float:
        return self._release_h


@dataclass(frozen=True, slots=True)
class SloEvidence:
    """Per sensitive tenant, carried in the controller state."""

    up: float = 0.0  # nats of evidence that the tail violates (reset after every action)
    down: float = 0.0  # nats of evidence that it meets its SLO
    up_bad: float = 0.0  # requests over the SLO since `up` last left zero
    up_n: float = 0.0  # requests since `up` last left zero
    n_recent: float = 0.0  # exponentially weighted requests (time constant rate_tau_s)
    b_recent: float = 0.0  # ... of them over the SLO
    t: float | None = None  # time of the last update
    counted: bool = False  # the last tick had request counts (False: legacy windows or no data)
    up_since: float | None = None  # when `up` last left zero: the change point's estimate
    fit_lo: float = 0.0  # exponentially weighted requests above the SLO bucket's lower bound
    fit_hi: float = 0.0  # ... and above its upper bound (time constant fit_tau_s)

    def rate(self, p: EvidenceParams) -> float:
        """Requests per second, recently."""
        return self.n_recent / p.rate_tau_s

    def bad_share(self) -> float | None:
        return self.b_recent / self.n_recent if self.n_recent >= 1.0 else None

    def burn_rate(self, eps: float) -> float | None:
        share = self.bad_share()
        return share / eps if share is not None and eps > 0 else None

    def reset(self) -> SloEvidence:
        """After an action: the next decision needs fresh evidence about the new situation."""
        # replace(self, up=0.0, down=0.0, up_bad=0.0, up_n=0.0, up_since=None), built directly
        return _evidence(0.0, 0.0, 0.0, 0.0, self.n_recent, self.b_recent, self.t, self.counted, None, self.fit_lo,
                         self.fit_hi)  # fmt: skip

    def held_at(self, h: float) -> SloEvidence:
        """At most `h` nats of violation: a hold that waits for time, not for fresh evidence, keeps
        what it has up to the threshold, so the next violating window triggers again and a calm
        one ends it at once (a CUSUM left above h would outlast the tail)."""
        if self.up <= h:
            return self
        return _evidence(h, self.down, self.up_bad, self.up_n, self.n_recent, self.b_recent, self.t, self.counted,
                         self.up_since, self.fit_lo, self.fit_hi)  # fmt: skip


# SloEvidence(...) with every field in order, built through its slots' own setters: a frozen
# dataclass's __init__ goes through object.__setattr__ field by field, 2.5 times as dear, and one is
# built for every sensitive tenant on every tick. Same class, same value (tests/test_fsm_fastpaths.py).
_EVIDENCE_SET = field_setters(SloEvidence)
_new = object.__new__


def _evidence(
    up: float,
    down: float,
    up_bad: float,
    up_n: float,
    n_recent: float,
    b_recent: float,
    t: float | None,
    counted: bool,
    up_since: float | None,
    fit_lo: float,
    fit_hi: float,
) -> SloEvidence:
    e: SloEvidence = _new(SloEvidence)
    s_up, s_down, s_up_bad, s_up_n, s_n, s_b, s_t, s_counted, s_since, s_lo, s_hi = _EVIDENCE_SET
    s_up(e, up)
    s_down(e, down)
    s_up_bad(e, up_bad)
    s_up_n(e, up_n)
    s_n(e, n_recent)
    s_b(e, b_recent)
    s_t(e, t)
    s_counted(e, counted)
    s_since(e, up_since)
    s_lo(e, fit_lo)
    s_hi(e, fit_hi)
    return e


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    value: float | None  # the window's quantile (s), for operators and the resize release check
    count: int  # requests in the window
    bad: float | None  # requests over the SLO in the window (None: the source cannot tell)


_JUDGEMENT_SET = field_setters(Judgement)


def _judgement(verdict: Verdict, value: float | None, count: int, bad: float | None) -> Judgement:
    """Judgement(verdict, value, count, bad), as _evidence builds SloEvidence (one per tenant and tick)."""
    j: Judgement = _new(Judgement)
    s_verdict, s_value, s_count, s_bad = _JUDGEMENT_SET
    s_verdict(j, verdict)
    s_value(j, value)
    s_count(j, count)
    s_bad(j, bad)
    return j


# A pure function of two policy figures, asked for twice per sensitive tenant and tick: memoised
# (typed, so that an int and a float never share a result).
@lru_cache(maxsize=256, typed=True)
def llr_weights(eps: float, burn: float) -> tuple[float, float]:
    """(nats per request over the SLO, nats per request within it) of H1 against H0."""
    p0 = min(max(eps, 1e-9), 0.5)
    # (a floor too: a release burn of 1e-320 underflows to 0 against any tail, and log(0) failed
    # every tick of a daemon that check-config had accepted)
    p1 = min(max(p0 * burn, 1e-12), 0.999)
    return math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))


def over_slo(window: LatencyWindow, slo_s: float) -> float | None:
    """Requests over the SLO in the window: the source's count, else counted from raw samples."""
    if window.over_slo is not None:
        return min(float(window.over_slo), float(window.count))
    if window.samples:
        return float(sum(1 for s in window.samples if s > slo_s))
    return None


_S50, _S99, _S999 = 1.0 - 0.5, 1.0 - 0.99, 1.0 - 0.999  # shares above p50, p99, p999
_LN = {_S50: math.log(_S50), _S99: math.log(_S99), _S999: math.log(_S999)}


def share_from_quantiles(window: LatencyWindow, slo_s: float) -> float | None:
    """A window's share of requests over the SLO, estimated from the quantiles it reports (p50,
    p99, p999): log-linear between the two that bracket the SLO; 0.5 below the median, and
    0.001 x the ratio above the p999 (a thin tail's bound)."""
    p50, p99, p999 = window.p50, window.p99, window.p999
    if p50 is not None and p99 is not None and p999 is not None:
        # The common case, the loop below unrolled (every tick, per tenant, for sources without counts).
        if slo_s <= p50:
            return _S50
        if slo_s <= p99:
            return _log_linear(_S50, p50, _S99, p99, slo_s)
        if slo_s <= p999:
            return _log_linear(_S99, p99, _S999, p999, slo_s)
        return _S999 * min(1.0, p999 / slo_s)
    pts = [(s, v) for s, v in ((_S50, p50), (_S99, p99), (_S999, p999)) if v is not None]
    if not pts:
        return None
    if slo_s <= pts[0][1]:
        return pts[0][0]
    for (sa, xa), (sb, xb) in itertools.pairwise(pts):
        if xa <= slo_s <= xb:
            return _log_linear(sa, xa, sb, xb, slo_s)
    s_last, x_last = pts[-1]
    return s_last * min(1.0, x_last / slo_s)


def _log_linear(sa: float, xa: float, sb: float, xb: float, x: float) -> float:
    """The share above x, log-linear between (xa, share sa) and (xb, share sb), xa <= x <= xb."""
    f = (x - xa) / (xb - xa) if xb > xa else 1.0
    la = _LN[sa]  # math.log(sa), once per share (the same number)
    return math.exp(la + (_LN[sb] - la) * f)


def update(
    ev: SloEvidence, window: LatencyWindow | None, q: float, slo_s: float, p: EvidenceParams, now: float
) -> tuple[SloEvidence, Judgement]:
    eps = 1.0 - q
    dt = now - ev.t if ev.t is not None and now > ev.t else 0.0
    decay = math.exp(-dt / p.rate_tau_s) if dt > 0 else 1.0
    n_recent, b_recent = ev.n_recent * decay, ev.b_recent * decay
    fit_lo, fit_hi = ev.fit_lo, ev.fit_hi
    if dt > 0 and (fit_lo or fit_hi):  # no tail fitted yet (sources without buckets): nothing decays
        fit_decay = math.exp(-dt / p.fit_tau_s)
        fit_lo, fit_hi = fit_lo * fit_decay, fit_hi * fit_decay
    count = window.count if window is not None else 0
    bad = (
        over_slo(window, slo_s)
        if window is not None and count > 0 and (window.over_slo is not None or window.samples)
        else None
    )
    value = window.quantile(q) if window is not None and count > 0 else None
    up, down, up_bad, up_n = ev.up, ev.down, ev.up_bad, ev.up_n
    h, release_h, step_up, step_down = p._h, p._release_h, p._step_up, p._step_down
    up_since = ev.up_since
    if bad is not None:
        assert window is not None
        if window.over_slo_range is not None and window.over_slo_bucket is not None:
            # Read off histogram buckets: the requests in the SLO's bucket, split by the tail's shape.
            certain, possible = window.over_slo_range
            fit_lo, fit_hi = fit_lo + possible, fit_hi + certain
            lo, hi = window.over_slo_bucket
            bad = certain + (possible - certain) * tail_fraction(fit_lo, fit_hi, (slo_s - lo) / (hi - lo))
        w_bad, w_good = llr_weights(eps, p.burn)
        r_bad, r_good = llr_weights(eps, p.release_burn)
        up = max(0.0, up + min(bad * w_bad + (count - bad) * w_good, step_up))
        down = max(0.0, down + min(bad * r_bad + (count - bad) * r_good, step_down))
        up_bad = up_bad + bad if up > 0 else 0.0
        up_n = up_n + count if up > 0 else 0.0
        n_recent += count
        b_recent += bad
        counted = True
        legacy_empty = False
    else:
        # No counts: today's per-window rule (fsm.quantiles.judge) as the special case.
        wv = verdict_of(value, count, slo_s, p.release_ratio, p.min_window_count)  # judge()'s verdict
        legacy_empty = wv is Verdict.EMPTY
        share = share_from_quantiles(window, slo_s) if window is not None else None
        if wv is Verdict.VIOLATING:
            up, down = up + step_up, 0.0
            up_bad, up_n = up_bad + max(eps, share or 0.0) * count, up_n + count
        elif wv is Verdict.GOOD:
            up, down, up_bad, up_n = 0.0, down + step_down, 0.0, 0.0
        elif wv is Verdict.BETWEEN:
            up, down, up_bad, up_n = 0.0, 0.0, 0.0, 0.0
        if wv is not Verdict.EMPTY and window is not None:
            n_recent += count
            b_recent += (share or 0.0) * count
        counted = False
    if up <= 0.0:
        up_since = None
    elif up_since is None:
        up_since = now
    new = _evidence(up, down, up_bad, up_n, n_recent, b_recent, now, counted, up_since, fit_lo, fit_hi)
    if up >= h - 1e-9 and count > 0 and not legacy_empty:
        verdict = Verdict.VIOLATING
    elif down >= release_h - 1e-9 and count > 0 and not legacy_empty:
        verdict = Verdict.GOOD
    elif count == 0 or legacy_empty:
        verdict = Verdict.EMPTY
    else:
        verdict = Verdict.BETWEEN
    return new, _judgement(verdict, value, count, bad)


def window_evidence(
    ev: SloEvidence, q: float, p: EvidenceParams, value: float | None, slo_s: float, bad_ticks: int
) -> dict[str, Any]:
    """What an escalation's event shows of its window and the evidence (rounded for people), in one
    dict display (it runs on the rare event tick, cold, which sets decide()'s p99)."""
    burn = ev.burn_rate(1.0 - q)
    return {
        "value_s": value,
        "slo_s": slo_s,
        "quantile": q,
        "bad_ticks": bad_ticks,
        "evidence_nats": round(ev.up, 2),
        "threshold_nats": round(p.h, 2),
        "calm_nats": round(ev.down, 2),
        "bad_requests": round(ev.up_bad, 1),
        "rate_rps": round(ev.rate(p), 3),
        "burn_rate": round(burn, 2) if burn is not None else None,
    }


_PARAMS: dict[int, tuple[Policy, EvidenceParams]] = {}  # id(policy) -> (policy, its parameters)


def evidence_params(policy: Policy) -> EvidenceParams:
    """The policy's evidence parameters; the same object for the same policy (one per tick asks)."""
    hit = _PARAMS.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    if len(_PARAMS) >= 64:
        _PARAMS.clear()
    params = _PARAMS[id(policy)] = (policy, _params_of(policy))
    return params[1]


def _params_of(policy: Policy) -> EvidenceParams:
    return EvidenceParams(
        burn=policy.evidence_burn,
        alpha=policy.evidence_alpha,
        release_burn=policy.release_burn,
        release_alpha=policy.release_alpha,
        min_ticks=policy.y_windows,
        min_release_ticks=policy.z_windows,
        rate_tau_s=policy.rate_tau_s,
        release_ratio=policy.release_ratio,
        min_window_count=policy.min_window_count,
    )
