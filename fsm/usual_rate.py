"""A tenant's usual request rate: the requests of its windows over their seconds, weighted over the
outage budget's window (TenantCtl.served), with its history before the controller watched it where
its latency source told it (TenantCtl.history): what an outage met in a burst is charged against,
and what the rest of a window's requests are counted at."""

from __future__ import annotations

import math

from fsm.observation import TenantSample
from fsm.state import TenantCtl


def usual_rate(ctl: TenantCtl) -> float | None:
    """The tenant's usual rate: its requests over the seconds of its windows (empty ones too, once
    it has had requests), weighted over the outage budget's window, with its history before it was
    watched where its source told it (TenantCtl.history; None before it has served any)."""
    n, s = ctl.served
    hn, hs = ctl.history
    n, s = n + hn, s + hs
    return n / s if s > 0 and n > 0 else None


def at_least_usual(ctl: TenantCtl, recent: float) -> float:
    """The recent rate, or the tenant's usual one where that is higher."""
    usual = usual_rate(ctl)
    return usual if usual is not None and usual > recent else recent


def served_before(ts: TenantSample | None, counted: float, dt: float, tau: float) -> tuple[float, float] | None:
    """The tenant's history (TenantCtl.history) at its first window of known seconds (`dt`): the
    requests its source counted since its server started less those the controller has `counted`
    (this window's, and a first one's without seconds), over the seconds it ran before this window
    (TenantSample.served_total, uptime_s); that rate over the tau x (1 - e^(-U/tau)) seconds the
    decay keeps of U, as `served` would hold them had the controller watched since the server
    started. A controller that starts on a busy host then knows the tenant's usual rate from its
    first minute, not only the rate of that minute (docs/decisions.md, "A tenant's history").
    None: nothing known."""
    if ts is None or ts.served_total is None or ts.uptime_s is None:
        return None
    before_n, before_s = ts.served_total - counted, ts.uptime_s - dt
    if before_s <= 0 or before_n < 0:  # started in this window, or counters that do not add up
        return None
    s = -tau * math.expm1(-before_s / tau)
    return before_n / before_s * s, s
