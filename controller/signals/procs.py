"""A tenant's processes, as its cgroup lists them, and its restarts told from them.

A restart replaces every process of the tenant's cgroup (a systemd unit's restart, a pod's
container restarted, a deploy): no process seen before is there after. That is a restart whatever
the tenant's latency source; a Prometheus histogram also shows it (its counters go back to zero,
controller/signals/latency.py), a JSONL file or MQTT pushes do not. Formats: `cgroup.procs`, one
process id per line (the kernel's Documentation/admin-guide/cgroup-v2.rst); `/proc/PID/stat`, whose
22nd field is the process's start time in clock ticks after boot (proc(5)). A process is its id and
its start time: an id the kernel gave out again after a restart is another process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.signals.base import ParseError, counter
from schema.files import read_small_text
from schema.jsontext import ascii_digits, fields, shown, text_lines

Process = tuple[int, int]  # (pid, start time in clock ticks after boot)
_PID_DIGITS = 10  # pid_max is at most 2**22 (4,194,304: 7 digits); a u32 fits in 10
_STARTTIME_FIELD = 22  # proc(5), counted from 1 (pid is 1, comm 2, state 3)


# The kernel's file: one id a line, each "\n"-terminated; anything else takes the careful path
_PROCS_FILE = re.compile(rf"(?:[1-9][0-9]{{0,{_PID_DIGITS - 1}}}\n)*")


def parse_cgroup_procs(text: str, source: str = "cgroup.procs") -> frozenset[int]:
    if _PROCS_FILE.fullmatch(text):
        return frozenset(map(int, text.split()))
    out: set[int] = set()
    for n, line in enumerate(text_lines(text), 1):
        f = fields(line)
        if not f:
            continue
        if len(f) != 1 or not ascii_digits(f[0]) or len(f[0]) > _PID_DIGITS:
            raise ParseError(source, n, f"not a process id: {shown(line.strip())}")
        if int(f[0]) == 0:
            # the kernel shows a process outside the reader's pid namespace as 0 (pid_vnr)
            raise ParseError(
                source, n, "0: a process outside tailguard's pid namespace (run it in the host's: hostPID in a pod)"
            )
        out.add(int(f[0]))
    return frozenset(out)


def parse_stat_starttime(text: str, source: str = "stat") -> int:
    """The start time of /proc/PID/stat's line. Its second field, the command in parentheses, may
    hold spaces and parentheses itself: the fields after it start after the last ')'."""
    head, sep, rest = text.rpartition(")")
    if not sep or "(" not in head:
        raise ParseError(source, 1, "no '(comm)' field")
    f = rest.split()
    i = _STARTTIME_FIELD - 3  # rest starts at field 3, the state
    if len(f) <= i:
        raise ParseError(source, 1, f"{len(f) + 2} fields, the start time is field {_STARTTIME_FIELD}")
    return counter(f[i], source, 1, "starttime")


class ProcessTable:
    """Reads the processes of cgroups: their ids from `cgroup.procs` each time, the start time of an
    id only when it first shows (a server's processes live for hours: nothing more to read)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self._start: dict[int, int] = {}  # pid -> start time, for the ids seen at the last read

    def forget(self, known: frozenset[int]) -> None:
        """Drop the start times of the ids not in `known` (every id the cgroups listed this time):
        an id that went away may come back as another process."""
        for gone in [p for p in self._start if p not in known]:
            del self._start[gone]

    def processes(self, pids: frozenset[int]) -> frozenset[Process]:
        """`pids` with their start times. An id whose stat is gone exited meanwhile: left out."""
        out: set[Process] = set()
        for pid in pids:
            st = self._start.get(pid)
            if st is None:
                path = os.path.join(self.proc_root, str(pid), "stat")
                try:
                    st = parse_stat_starttime(read_small_text(path, errors="replace"), path)
                except (FileNotFoundError, ProcessLookupError):  # it exited since the list was read
                    continue
                self._start[pid] = st
            out.add((pid, st))
        return frozenset(out)


@dataclass(slots=True)
class _Seen:
    processes: frozenset[Process]  # the last non-empty set seen
    alive_at: float  # when it was last seen
    replaced_since: float | None = None  # a restart seen, not yet reported: the old set's last sighting


@dataclass(slots=True)
class RestartWatch:
    """Per tenant, restarts told from its processes, reported as the latency sampler reports its own
    (TenantSample.restarted_s: the seconds since the tenant was last seen serving), once the tenant
    serves again: at the first window with requests in it, or at once where no window tells (a
    tenant whose latency is pushed over MQTT, or has no source). A restart its latency sampler
    reports too is reported once, with the longer of the two spans."""

    seen: dict[str, _Seen] = field(default_factory=dict)

    def update(
        self,
        tenant: str,
        now: float,
        processes: frozenset[Process] | None,
        sampler_restarted_s: float | None,
        window_count: int | None,
        has_window: bool,
    ) -> float | None:
        """The restart to report this tick (its span in seconds), or None. `processes`: the cgroup's
        (None: not read this tick); `sampler_restarted_s`: what the latency sampler says;
        `window_count`: requests in this tick's window (None: no window); `has_window`: the tenant's
        windows come through the collector at all."""
        s = self.seen.get(tenant)
        if processes:
            if s is None:
                self.seen[tenant] = s = _Seen(processes, now)
            else:
                if s.replaced_since is None and not (processes & s.processes):
                    s.replaced_since = s.alive_at
                s.processes, s.alive_at = processes, now
        if s is None or s.replaced_since is None:
            return sampler_restarted_s
        span = now - s.replaced_since
        if sampler_restarted_s is not None:
            s.replaced_since = None
            return max(span, sampler_restarted_s)
        if not has_window or (window_count or 0) > 0:
            s.replaced_since = None
            return span
        return None

    def forget_missing(self, tenants: Mapping[str, object]) -> None:
        for name in [n for n in self.seen if n not in tenants]:
            del self.seen[name]
