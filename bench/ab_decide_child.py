"""One side of bench_ab_decide: decide() over bench_decide's stream, from the tree given as the first
argument (imported from there, not from this checkout: that tree's own bench_decide builds the host
and the observations with that tree's fsm types). Reads `round` per line on stdin and answers one
JSON line per round: per-tick wall and thread CPU times (ns) summarised, every tick's CPU time, and
the decisions made;
`quit` exits. The stream is built once, before the first round, and is not timed."""

# ruff: noqa: E402

from __future__ import annotations

import json
import statistics
import sys
import time

root, ticks = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, root)  # the tree under test, ahead of the editable install of this one
import bench.bench_decide as bench_decide
from fsm.decide import decide
from fsm.state import ControllerState

for mod in (bench_decide, sys.modules["fsm.decide"]):
    assert mod.__file__ is not None and mod.__file__.startswith(root), (mod.__name__, mod.__file__)

SPEC, HOMES = bench_decide.build()
STREAM = [bench_decide.observation(SPEC, HOMES, i) for i in range(ticks)]


def one_round() -> dict[str, float | int]:
    """Every tick of the stream from a fresh controller state, as bench_decide.measure does."""
    state = ControllerState()
    wall: list[int] = []
    cpu: list[int] = []
    events = 0
    for obs in STREAM:
        t0 = time.perf_counter_ns()
        c0 = time.thread_time_ns()
        d = decide(state, obs, SPEC)
        c1 = time.thread_time_ns()
        t1 = time.perf_counter_ns()
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
        state = d.state
        events += len(d.events)
    per_tick = list(cpu)  # in the stream's order: the parent's per-tick medians over rounds
    wall.sort()
    cpu.sort()
    p99 = int(0.99 * (len(wall) - 1))  # the same rank as bench_decide.measure
    return {
        "cpu_ns": per_tick,
        "median_wall_ns": statistics.median(wall),
        "p99_wall_ns": wall[p99],
        "median_cpu_ns": statistics.median(cpu),
        "p99_cpu_ns": cpu[p99],
        "decisions": events,
    }


def main() -> None:
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "round":
            raise SystemExit(f"unknown command {cmd!r}")
        print(json.dumps(one_round()), flush=True)


main()
