"""Shadow replay: feed a recorded observation trace to the decision core and report what it would
have decided, tick by tick. Nothing is applied (the policy's `enforce` is forced off)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from fsm.decide import decide
from fsm.desired import DecisionEvent
from fsm.spec import HostSpec
from fsm.state import ControllerState
from replay.trace import TraceHeader, read_trace


@dataclass(slots=True)
class ShadowSummary:
    ticks: int = 0
    first_t: float | None = None
    last_t: float | None = None
    events: Counter[str] = field(default_factory=Counter)  # kind -> count
    levers: Counter[str] = field(default_factory=Counter)  # lever of escalations
    final_levels: dict[str, str] = field(default_factory=dict)
    bad_input: dict[str, int] = field(default_factory=dict)


def shadow(
    path: str | os.PathLike[str], spec: HostSpec | None = None
) -> tuple[TraceHeader, Iterator[tuple[float, tuple[DecisionEvent, ...]]], ShadowSummary]:
    """(header, per-tick (t, events) iterator, summary filled as the iterator is consumed)."""
    header, observations = read_trace(path)
    base = spec or header.spec
    spec_ = replace(base, policy=replace(base.policy, enforce=False))
    summary = ShadowSummary()

    def ticks() -> Iterator[tuple[float, tuple[DecisionEvent, ...]]]:
        state = ControllerState()
        for obs in observations:
            d = decide(state, obs, spec_)
            state = d.state
            summary.ticks += 1
            summary.first_t = obs.t if summary.first_t is None else summary.first_t
            summary.last_t = obs.t
            for e in d.events:
                summary.events[e.kind] += 1
                if e.kind == "escalate":
                    summary.levers[e.lever] += 1
            summary.final_levels = {n: c.level.value for n, c in sorted(state.tenants.items())}
            summary.bad_input = dict(state.bad_input)
            yield obs.t, d.events

    return header, ticks(), summary


def format_event(e: DecisionEvent) -> str:
    lever = f" [{e.lever}]" if e.lever else ""
    return f"t={e.t:10.1f}  {e.tenant}: {e.kind:8s} {e.level_from} -> {e.level_to}{lever}  {e.reason}"
