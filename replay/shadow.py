"""Shadow replay: feed a recorded observation trace to the decision core and report what it would
have decided, tick by tick. Nothing is applied (the policy's `enforce` is forced off)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from fsm.decide import decide
from fsm.desired import DecisionEvent, DesiredState
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
    cut_lines: list[int] = field(default_factory=list)  # lines cut short by a crash, skipped


def shadow(
    path: str | os.PathLike[str], spec: HostSpec | None = None, on_cut: Callable[[int], None] | None = None
) -> tuple[TraceHeader, Iterator[tuple[float, tuple[DecisionEvent, ...], DesiredState]], ShadowSummary]:
    """(header, per-tick (t, events, desired) iterator, summary filled as it is consumed).
    `on_cut(line)`: told of each line cut short by a crash, as it is skipped."""
    summary = ShadowSummary()

    def cut(line: int) -> None:
        summary.cut_lines.append(line)
        if on_cut is not None:
            on_cut(line)

    header, observations = read_trace(path, cut)
    base = spec or header.spec
    spec_ = replace(base, policy=replace(base.policy, enforce=False))

    def ticks() -> Iterator[tuple[float, tuple[DecisionEvent, ...], DesiredState]]:
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
            yield obs.t, d.events, d.desired

    return header, ticks(), summary


def format_event(e: DecisionEvent) -> str:
    lever = f" [{e.lever}]" if e.lever else ""
    return f"t={e.t:10.1f}  {e.tenant}: {e.kind:8s} {e.level_from} -> {e.level_to}{lever}  {e.reason}"


def describe_desired(d: DesiredState) -> str:
    """The isolation the controller wants, in one line (caps, MPS limits, placements, layouts)."""
    parts = []
    for c in d.throttles:
        lim = "/".join(
            f"{k} {v / 1e6:.0f} MB/s" for k, v in (("read", c.read_bps), ("write", c.write_bps)) if v is not None
        )
        parts.append(f"cap {c.tenant} on {c.device} ({lim})")
    parts += [f"mps {m.tenant} on {m.gpu} {m.percent}%" for m in d.mps]
    parts += [f"place {n} at {i}" for n, i in sorted(d.placements.items())]
    parts += [f"layout {g} = {','.join(str(s) for s in lay)}" for g, lay in sorted(d.layouts.items())]
    return "; ".join(parts) or "nothing (hands off)"
