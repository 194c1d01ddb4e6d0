"""Degraded conditions: what is not working right now, why, and since when.

The daemon keeps running when part of the host is unwell (a failed recovery, an unwritable journal,
a signal source that does not answer) and says so instead: each condition is named, carries its
cause and the wall time it started, and shows in `/status` and status.json (`degraded`), in the
metrics (`tailguard_degraded{condition}`, `tailguard_degraded_since_seconds{condition}`) and in
systemd's `STATUS=` line. A condition is logged once when it starts (and again if it clears and
comes back), never once per tick.

Conditions belong to a group, and whoever reports a group replaces it as a whole with `sync()`:
the daemon syncs group "source" (names `source:<sampler>`, from each observation's `unavailable`)
and group "host" (the Host's optional `conditions()`: recovery, journal); anything else may
`set()` / `clear()` single conditions of its own group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("tailguard.degraded")

SOURCE = "source"  # group of the signal sources; condition names are "source:<name>"
HOST = "host"  # group the Host reports through conditions()


@dataclass(frozen=True, slots=True)
class Condition:
    name: str  # "recovery", "journal", "source:nvml", ...
    cause: str  # what is wrong, for an operator
    since: float  # time.time() when it started
    group: str = ""


class Degraded:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._conds: dict[str, Condition] = {}
        self.changes_total = 0

    def set(self, name: str, cause: str, group: str = "") -> bool:
        """Start (or keep) a condition; True when it is new. A changed cause is kept quietly."""
        cur = self._conds.get(name)
        if cur is not None:
            if cur.cause != cause:
                self._conds[name] = Condition(name, cause, cur.since, cur.group)
            return False
        self._conds[name] = Condition(name, cause, self.clock(), group)
        self.changes_total += 1
        log.warning("degraded: %s: %s", name, cause)
        return True

    def clear(self, name: str) -> bool:
        cur = self._conds.pop(name, None)
        if cur is None:
            return False
        self.changes_total += 1
        log.warning("recovered: %s (degraded for %.0f s: %s)", name, max(0.0, self.clock() - cur.since), cur.cause)
        return True

    def sync(self, group: str, current: Mapping[str, str]) -> None:
        """Make the group's conditions exactly `current` (name -> cause)."""
        for name in [n for n, c in self._conds.items() if c.group == group and n not in current]:
            self.clear(name)
        for name, cause in sorted(current.items()):
            self.set(name, cause, group)

    def conditions(self) -> tuple[Condition, ...]:
        return tuple(sorted(self._conds.values(), key=lambda c: c.name))

    def names(self, group: str | None = None) -> list[str]:
        return sorted(n for n, c in self._conds.items() if group is None or c.group == group)

    def __contains__(self, name: object) -> bool:
        return name in self._conds

    def __bool__(self) -> bool:
        return bool(self._conds)


def source_conditions(unavailable: Mapping[str, str]) -> dict[str, str]:
    """An observation's unavailable sources as conditions of group SOURCE."""
    return {f"{SOURCE}:{name}": cause for name, cause in unavailable.items()}


def summary(conds: tuple[Condition, ...], limit: int = 6) -> str:
    """'recovery, journal, source:nvml (+3 more)': for one-line places (sd_notify STATUS=)."""
    names = [c.name for c in conds]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" (+{len(names) - limit} more)"
