"""Cumulative counters -> per-second rates that never go negative or absurd.

A counter that goes down was reset (driver reload, device re-plugged, cgroup recreated) or
wrapped; that interval has no rate (None), and the next one starts from the new value. A rate
above `max_rate` is treated the same way: a wrapped 32-bit counter looks like a huge jump.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class CounterRates:
    """Remembers the previous (t, value) per key and turns the next reading into a rate."""

    max_rate: float = float("inf")
    _prev: dict[Hashable, tuple[float, float]] = field(default_factory=dict)

    def update(self, key: Hashable, t: float, value: float) -> float | None:
        prev = self._prev.get(key)
        self._prev[key] = (t, value)
        if prev is None:
            return None
        t0, v0 = prev
        dt = t - t0
        if dt <= 0:
            return None
        dv = value - v0
        if dv < 0:
            return None  # reset or wrap: skip this interval
        rate = dv / dt
        if rate > self.max_rate:
            return None
        return rate

    def forget_missing(self, seen: set[Hashable]) -> None:
        """Drop keys not read this time (a device or cgroup that went away)."""
        for k in [k for k in self._prev if k not in seen]:
            del self._prev[k]
