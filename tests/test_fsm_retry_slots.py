"""Retries spread over ticks (Policy.hold_retries_per_tick). Victims hit by one episode are refused
alike (the same budget spent, the same guard being judged) and came back on the same tick: on
bench_decide's host four held victims escalated together every few seconds, and those ticks set
decide()'s p99. Now a tenant with a lever on or refused before takes one of the tick's retry slots,
the most urgent first, one queued for a cooldown before any; an episode's first escalation never
waits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.bench_decide import build, observation
from fsm.codec import decode, encode
from fsm.decide import decide
from fsm.ladder import Tick
from fsm.spec import HostSpec
from fsm.state import ControllerState, TenantCtl

TICK_S = 2.0  # bench_decide's observations are 2 s apart


def _spec(**policy: object) -> tuple[HostSpec, dict]:
    spec, homes = build()
    return replace(spec, policy=replace(spec.policy, **policy)), homes


def _run(monkeypatch: pytest.MonkeyPatch, ticks: int, **policy: object):
    """(states, and per tick the escalations run: (tenant, was it a retry))."""
    spec, homes = _spec(**policy)
    runs: list[list[tuple[str, bool]]] = []
    real = Tick._escalate

    def counted(self: Tick, t, value, slo) -> None:  # type: ignore[no-untyped-def]
        ctl = self.tenants[t.name]
        runs[-1].append((t.name, bool(ctl.stack or ctl.last_reason)))
        real(self, t, value, slo)

    monkeypatch.setattr(Tick, "_escalate", counted)
    state, states = ControllerState(), []
    for i in range(ticks):
        runs.append([])
        state = decide(state, observation(spec, homes, i), spec).state
        states.append(state)
    return states, runs


def test_one_retry_per_tick_and_first_escalations_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    states, runs = _run(monkeypatch, 600)
    retries = [sum(r for _, r in tick) for tick in runs]
    firsts = [sum(not r for _, r in tick) for tick in runs]
    assert max(retries) == 1
    assert sum(retries) >= 60  # the held victims did retry, one at a time
    assert max(firsts) == 4  # the burst's start: all four victims at once, none held back
    queued = [n for s in states for n, c in s.tenants.items() if c.retry_queued is not None]
    assert queued  # some waited


def test_no_victim_waits_longer_than_a_cooldown_and_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four victims of equal urgency contend (decide() orders them by name then): the slot goes to
    the first that asks, and one queued for a cooldown_s holds it next, the longest queued first. A
    queued victim keeps its trigger until its turn (the evidence crosses its threshold on one tick
    in three)."""
    states, runs = _run(monkeypatch, 1500)
    cooldown = build()[0].policy.cooldown_s
    waited: dict[str, float] = {}
    for i, s in enumerate(states):
        now = 1000.0 + TICK_S * i
        for name, c in s.tenants.items():
            if c.retry_queued is not None:
                assert now - c.retry_queued <= cooldown + 3 * TICK_S, (i, name)
                waited[name] = max(waited.get(name, 0.0), now - c.retry_queued)
        ran = [n for n, r in runs[i] if r]
        for name, c in states[i - 1].tenants.items() if i else ():
            if c.retry_queued is not None and states[i].tenants[name].retry_queued is None:
                # off the queue: its turn came, or the burst is over (its tail judged good)
                assert name in ran or (i // 50) % 2 == 0, (i, name)
        prev = states[i - 1].tenants if i else {}
        aged = sorted((c.retry_queued, n) for n, c in prev.items() if c.retry_queued is not None
                      and now - c.retry_queued >= cooldown)  # fmt: skip
        if ran and aged and any(n == aged[0][1] for n, _ in runs[i]):
            assert ran == [aged[0][1]]  # queued for a cooldown: it took the slot
    assert set(waited) == {"t00", "t02", "t04", "t06"}  # each waited its turn at some point
    assert max(waited.values()) > 3 * TICK_S  # the last by name waited on the others (not FIFO)


@pytest.mark.parametrize("slots", [1, 2])
def test_those_queued_for_a_cooldown_hold_the_slots_whatever_the_order_they_ask_in(slots: int) -> None:
    spec, homes = _spec(hold_retries_per_tick=slots)
    now = 1000.0 + TICK_S * 60
    # t06 and t02 queued for more than a cooldown (30 s), t06 the longer; t04 for less
    queued = {"t06": now - 40.0, "t02": now - 35.0, "t04": now - 4.0}
    state = ControllerState(tenants={n: TenantCtl(retry_queued=q) for n, q in queued.items()})
    tick = Tick.start(state, observation(spec, homes, 60), spec)
    # decide()'s order is by urgency: those queued longest may ask last
    asked = {n: tick._retry_turn(n, exempt=False) for n in ("t00", "t04", "t02", "t06")}
    assert asked == {"t00": False, "t04": False, "t02": slots == 2, "t06": True}
    assert tick.tenants["t06"].retry_queued is None  # ran: off the queue
    assert tick.tenants["t04"].retry_queued == now - 4.0  # still queued since its first refusal
    assert tick.tenants["t00"].retry_queued == now  # queued now
    assert tick._retry_turn("t00", exempt=True)  # a first escalation never waits


def test_otherwise_the_most_urgent_asks_first() -> None:
    """Queued for less than a cooldown: no slot held, the first to ask in decide()'s order (most
    urgent first) takes it, as a free instance or a budget goes to the worst tail."""
    spec, homes = _spec()
    now = 1000.0 + TICK_S * 60
    state = ControllerState(tenants={"t06": TenantCtl(retry_queued=now - 20.0)})
    tick = Tick.start(state, observation(spec, homes, 60), spec)
    assert tick._retry_turn("t00", exempt=False) and not tick._retry_turn("t06", exempt=False)
    assert tick.tenants["t06"].retry_queued == now - 20.0


def test_a_queued_retry_survives_the_state_codec() -> None:
    state = ControllerState(tenants={"t00": TenantCtl(retry_queued=1234.5)})
    assert decode(ControllerState, encode(state)).tenants["t00"].retry_queued == 1234.5


@pytest.mark.parametrize(
    ("tick", "p99", "runs"),
    [
        (372, 0.013, True),  # a window in between (under the SLO, over release_ratio x SLO)
        (372, 0.005, True),  # one good window: not yet a good verdict
        (440, None, False),  # the burst long over: judged good
    ],
)
def test_a_queued_retry_keeps_its_trigger_until_the_tail_is_judged_good(
    monkeypatch: pytest.MonkeyPatch, tick: int, p99: float | None, runs: bool
) -> None:
    """Queued on a violating tick, its turn on a tick whose window is only in between (the evidence
    crosses its threshold on one tick in Y): it runs, as it would have a tick before. Once the tail
    is judged good it leaves the queue without running."""
    spec, homes = _spec()
    state = ControllerState()
    for i in range(tick):  # 372: into the fourth burst, the victims held, every lever refused
        state = decide(state, observation(spec, homes, i), spec).state
    assert not runs or state.tenants["t00"].last_reason  # a retry: it needs a slot
    # t00 alone queued, since long before
    tenants = {n: replace(c, retry_queued=1000.0 if n == "t00" else None) for n, c in state.tenants.items()}
    state = replace(state, tenants=tenants)
    obs = observation(spec, homes, tick)
    lat = obs.tenants["t00"].latency
    assert lat is not None
    if p99 is not None:
        obs = replace(obs, tenants={**obs.tenants, "t00": replace(obs.tenants["t00"], latency=replace(lat, p99=p99))})
    ran: list[str] = []
    real = Tick._escalate

    def counted(self: Tick, t, value, slo) -> None:  # type: ignore[no-untyped-def]
        ran.append(t.name)
        real(self, t, value, slo)

    monkeypatch.setattr(Tick, "_escalate", counted)
    after = decide(state, obs, spec).state.tenants["t00"]
    assert ("t00" in ran) is runs
    assert after.retry_queued is None
