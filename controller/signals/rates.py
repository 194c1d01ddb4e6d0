"""Cumulative counters -> per-second rates that never go negative or absurd.

A counter that goes down was reset (driver reload, device re-plugged, cgroup recreated) or
wrapped; that interval has no rate (None), and the next one starts from the new value. A rate
above `max_rate` is treated the same way: a wrapped 32-bit counter looks like a huge jump.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CounterRates:
    """Remembers the previous (t, value) per key and turns the next reading into a rate."""

    max_rate: float = float("inf")
    _prev: dict[Hashable, tuple[float, Any]] = field(default_factory=dict)

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

    def update_many(self, key: Hashable, t: float, values: tuple[float, ...]) -> tuple[float | None, ...]:
        """Several counters read together (one key, one previous entry): a reset of any of them
        drops the whole interval, since they come from the same source."""
        prev = self._prev.get(key)
        self._prev[key] = (t, values)
        if prev is None:
            return (None,) * len(values)
        t0, v0 = prev
        dt = t - t0
        if dt <= 0 or not isinstance(v0, tuple) or len(v0) != len(values):
            return (None,) * len(values)
        out: list[float | None] = []
        for a, b in zip(v0, values, strict=True):
            d = b - a
            r = d / dt
            out.append(None if d < 0 or r > self.max_rate else r)
        return tuple(out)

    def forget_missing(self, seen: set[Hashable]) -> None:
        """Drop keys not read this time (a device or cgroup that went away)."""
        for k in [k for k in self._prev if k not in seen]:
            del self._prev[k]
