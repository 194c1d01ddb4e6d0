"""Link bandwidth shared by weighted max-min fairness (progressive filling), with per-flow caps.

A resource is anything hashable with a capacity. The simulator's are (link, direction) pairs: a
PCIe link is full duplex, with an upstream (toward the root complex) and a downstream capacity, so
an NVMe read (up its switch's uplink) and a host-to-GPU copy (down the same uplink) do not contend,
while two host-to-GPU copies through one switch do (replay.simulator.flow_links builds the pairs).

A flow crosses a set of links, possibly a link more than once (an ETL pipeline that reads a drive
into host memory and copies it on to a GPU crosses its PCIe switch's uplink twice: both legs run
at the flow's rate). Rates rise in proportion to the weights until a flow reaches its cap (its
demand, or a throttle) or a link it crosses is full; those flows freeze and the rest keep rising.
The result never exceeds a link's capacity, honours every cap, and is work-conserving: every flow
is either at its cap or crosses a full link.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

_EPS = 1e-9
Link = TypeVar("Link", bound=Hashable)  # a link id, or (link id, "up" | "down")


@dataclass(frozen=True, slots=True)
class Flow(Generic[Link]):
    name: str
    links: Mapping[Link, int]  # link (or link and direction) -> how many times the flow crosses it
    cap: float = math.inf  # bytes/s: min(demand, throttle); inf = elastic
    weight: float = 1.0


def max_min(flows: Sequence[Flow[Link]], capacity: Mapping[Link, float]) -> dict[str, float]:
    """Rate of every flow (bytes/s). Links missing from `capacity` are not constraints."""
    if all(math.isfinite(f.cap) for f in flows):
        # Fast path: when every flow's demand fits, every flow simply gets its demand.
        need: dict[Link, float] = {}
        for f in flows:
            if f.cap > 0 and f.weight > 0:
                for link, m in f.links.items():
                    need[link] = need.get(link, 0.0) + m * f.cap
        if all(v <= capacity[link] for link, v in need.items() if link in capacity):
            return {f.name: (f.cap if f.cap > 0 and f.weight > 0 else 0.0) for f in flows}
    rate = {f.name: 0.0 for f in flows}
    residual = dict(capacity)
    active = []
    for f in flows:
        if f.cap <= 0 or f.weight <= 0:
            continue
        if not any(link in residual for link in f.links):
            rate[f.name] = f.cap  # crosses no modelled link: gets what it asks for
            continue
        active.append(f)
    # Each round freezes at least one flow or fills at least one link, so this bound is never hit
    # except by floating-point dust; it guarantees termination.
    for _ in range(len(flows) + len(residual) + 1):
        if not active:
            break
        load: dict[Link, float] = {}
        for f in active:
            for link, m in f.links.items():
                if link in residual:
                    load[link] = load.get(link, 0.0) + m * f.weight
        step = math.inf
        for link, ld in load.items():
            step = min(step, max(residual[link], 0.0) / ld)
        for f in active:
            step = min(step, (f.cap - rate[f.name]) / f.weight)
        for f in active:
            rate[f.name] += step * f.weight
        for link, ld in load.items():
            residual[link] -= step * ld
        full = {link for link in load if residual[link] <= _EPS * max(1.0, capacity[link])}
        active = [f for f in active if _has_room(f, rate[f.name]) and not any(link in full for link in f.links)]
    return rate


def _has_room(f: Flow[Link], rate: float) -> bool:
    return math.isinf(f.cap) or f.cap - rate > _EPS * f.cap


def link_load(flows: Sequence[Flow[Link]], rates: Mapping[str, float]) -> dict[Link, float]:
    """Bytes/s on every link a flow crosses."""
    out: dict[Link, float] = {}
    for f in flows:
        r = rates.get(f.name, 0.0)
        for link, m in f.links.items():
            out[link] = out.get(link, 0.0) + m * r
    return out
