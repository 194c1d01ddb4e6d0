"""A move or resize waits for the tenant's own backlog to drain (outage_burst_wait): a server past
its capacity completes at that capacity, so the burst test sees no burst in its counts; but its
recent rate is above the usual one and most of its requests are late (the window's median over the
SLO). The lever is held, tried again on every tick with the evidence kept, and taken once the
backlog has drained, or once it has waited as long as the outage lasts. A backlog at the usual rate
(the interference's: what the lever cures) does not wait."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from fsm.decide import decide
from fsm.desired import DecisionEvent
from fsm.examples import example_observation, example_spec
from fsm.observation import LatencyWindow, Observation
from fsm.spec import HostSpec, Policy
from fsm.state import ControllerState

TICK = 2.0
USUAL = 200  # requests per tick (100/s) for the first RISE ticks
RISE = 300  # the tenant's own rate rises from here (t = 600 s), by half
HIGH = 300
BAD_FROM = 330  # its tail is over the SLO from here (a minute later: the recent rate has followed)
N = 420
Window = Callable[[int], tuple[int, float, float]]  # tick -> (count, p50 s, share over the SLO)


def _obs(t: float, count: int, p50: float, bad: float, raw: bool = False) -> Observation:
    """The example host at t with no I/O aggressor; the llm tenant's window: `count` requests,
    median `p50` s, the share `bad` over its SLO (15 ms). `raw`: the window as a source of samples
    only sends it (its latencies and the count over the SLO, no quantiles)."""
    p99 = 0.030 if bad else 0.010
    o = example_observation(t, p99, 0.0)
    top = max(p50, p99)
    if raw:
        samples = (p50,) * (count - count // 20) + (top,) * (count // 20)
        w = LatencyWindow(count, samples=samples, over_slo=bad * count)
    else:
        w = LatencyWindow(count, p50, top, top * 1.3, over_slo=bad * count)
    llm = replace(o.tenants["llm"], latency=w)
    return replace(o, tenants={**o.tenants, "llm": llm})


def _run(spec: HostSpec, window: Window, raw: bool = False) -> list[list[DecisionEvent]]:
    """Events per tick; `window(i)` gives tick i's (count, p50, bad share)."""
    state = ControllerState()
    events: list[list[DecisionEvent]] = []
    for i in range(N):
        d = decide(state, _obs(TICK * i, *window(i), raw=raw), spec)
        state = d.state
        events.append(list(d.events))
    return events


def _spec(**changes: object) -> HostSpec:
    """Resizes only, unpriced; the llm tenant relaunches in 30 s (the example's 5 s is shorter
    than the tick's backlog of these tests)."""
    spec = example_spec(Policy(guards=False, mps=False, placement=False, cost_margin=None, **changes))  # type: ignore[arg-type]
    llm = replace(spec.tenants["llm"], relaunch_s=30.0)
    return replace(spec, tenants={**spec.tenants, "llm": llm})


def _first(events: list[list[DecisionEvent]], kind: str, text: str = "") -> int:
    return next(i for i, evs in enumerate(events) if any(e.kind == kind and text in e.reason for e in evs))


def _own_backlog(drained_at: int | None) -> Window:
    """The tenant's rate up by half from RISE; from BAD_FROM a backlog (median 50 ms, 60% late)
    until `drained_at` (None: it stays), then calm at the higher rate."""

    def window(i: int) -> tuple[int, float, float]:
        n = USUAL if i < RISE else HIGH
        if i < BAD_FROM or (drained_at is not None and i >= drained_at):
            return n, 0.005, 0.0
        return n, 0.050, 0.6

    return window


def _outage_of(reason: str) -> float:
    m = re.search(r"the (\d+) s outage waits for it to drain", reason)
    assert m, reason
    return float(m.group(1))


def test_a_resize_waits_for_the_tenants_own_backlog_and_is_taken_once_it_drains() -> None:
    at = _first(_run(_spec(), _own_backlog(drained_at=None)), "hold", "its own arrivals keep a backlog")
    drained = at + 5
    events = _run(_spec(), _own_backlog(drained_at=drained))
    (hold,) = [e for e in events[at] if e.kind == "hold"]
    # (the usual rate weighs the higher rate's minutes too: 105/s, not 100)
    assert re.search(
        r"resize: its own arrivals keep a backlog of about \d+ requests \(1[2-5]\d\.\d req/s against 10\d\.\d"
        r" usually, median 0\.05 s\): the \d+ s outage waits for it to drain",
        hold.reason,
    ), hold.reason
    assert _outage_of(hold.reason) > 5 * TICK  # the backlog drains before the wait runs out
    # held on every tick of the backlog, taken on the first tick after it (no fresh evidence needed)
    assert all(e.kind != "escalate" for evs in events[at:drained] for e in evs)
    assert _first(events, "escalate") == drained
    (esc,) = [e for e in events[drained] if e.kind == "escalate"]
    assert esc.lever == "resize"


def test_a_backlog_read_from_raw_samples_waits_as_one_read_from_quantiles() -> None:
    """A source that sends samples only (MQTT pushes, JSON lines) has no p50 in its windows: the
    median is its samples' (the backlog wait was blind to such a source)."""
    window = _own_backlog(drained_at=None)
    quantiles = _first(_run(_spec(), window), "hold", "its own arrivals keep a backlog")
    raw = _run(_spec(), window, raw=True)
    at = _first(raw, "hold", "its own arrivals keep a backlog")
    assert at == quantiles
    (hold,) = [e for e in raw[at] if e.kind == "hold"]
    assert "median 0.05 s" in hold.reason


def test_a_backlog_that_stays_is_waited_on_for_as_long_as_the_outage_lasts() -> None:
    events = _run(_spec(), _own_backlog(drained_at=None))
    at = _first(events, "hold", "its own arrivals keep a backlog")
    (hold,) = [e for e in events[at] if e.kind == "hold"]
    wait = _outage_of(hold.reason)
    esc = _first(events, "escalate")
    assert TICK * (esc - at) >= wait  # waited the outage's length ...
    assert TICK * (esc - at) < wait + 2 * TICK  # ... and no longer
    assert all(e.kind != "escalate" for evs in events[at:esc] for e in evs)


def test_a_backlog_at_the_usual_rate_is_the_interferences_and_does_not_wait() -> None:
    # the same late, saturated windows without the rise of the tenant's own rate
    def window(i: int) -> tuple[int, float, float]:
        return (USUAL, 0.050, 0.6) if i >= BAD_FROM else (USUAL, 0.005, 0.0)

    events = _run(_spec(), window)
    assert not any("backlog" in e.reason for evs in events for e in evs)
    assert any(e.kind == "escalate" and e.lever == "resize" for evs in events for e in evs)


def test_a_rise_of_the_rate_without_a_backlog_does_not_wait() -> None:
    # the rate up by half, the tail over the SLO but the median under it: a tail, not a queue
    def window(i: int) -> tuple[int, float, float]:
        n = USUAL if i < RISE else HIGH
        return (n, 0.005, 0.1) if i >= BAD_FROM else (n, 0.005, 0.0)

    events = _run(_spec(), window)
    assert not any("backlog" in e.reason for evs in events for e in evs)
    assert _first(events, "escalate") >= BAD_FROM


def test_without_the_wait_the_resize_is_taken_in_the_backlog() -> None:
    waited = _run(_spec(), _own_backlog(drained_at=None))
    at_once = _run(_spec(outage_burst_wait=False), _own_backlog(drained_at=None))
    assert _first(at_once, "escalate") < _first(waited, "escalate")
    assert not any("backlog" in e.reason for evs in at_once for e in evs)
