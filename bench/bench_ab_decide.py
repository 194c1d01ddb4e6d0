"""Interleaved A/B of decide(): this tree against another checkout (the code before a change), in
one run, on bench_decide's 16 GPU x 7 MIG instance host (32 tenants, 8 sensitive; calm and
interference phases of 100 s).

Two long-lived child processes, one per tree (same interpreter and venv), each importing only its
own tree, that tree first on sys.path, and asserting that bench.bench_decide and fsm.decide came
from there (bench/ab_decide_child.py). Each builds the host and the observation stream with its own
tree's bench_decide (the API may differ between the trees), once, untimed. A round is one pass of
every tick of the stream from a fresh ControllerState; the parent asks the two sides for one round
in turn, base/new then new/base (ABBA), so that the drift of a shared, loaded VM hits both alike at
round granularity. The first round of each side is a warm-up and dropped.

Per round and side: the median wall time per tick (perf_counter) and the p99 of the thread's CPU
time per tick (time.thread_time_ns: what the VM's neighbours steal is left out, and that dominates
the wall-clock tail here), plus the p99 wall and median CPU; then new / base per round and the
median of those ratios; and each tick's median CPU time over the rounds, whose p99 and median are
the steadier figures (the per-round p99 of a tree with many ticks of about the same cost near its
16th dearest is lifted by a round's noise more than another's). Issue 10's goal for decide()
against fdec899: p99 CPU at most 0.7x, median at most 1.0x.

Run: .venv/bin/python -m bench.bench_ab_decide --base /tmp/tailguard-fdec899 [--rounds 3] [--ticks 1500]
(make the base with `git archive fdec899 | tar -x -C /tmp/tailguard-fdec899`, or a detached
worktree: `git worktree add --detach /tmp/tailguard-fdec899 fdec899`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("ab_decide_child.py")  # run as a script: imports the tree it is given


class Side:
    def __init__(self, root: Path, ticks: int) -> None:
        if not (root / "fsm" / "decide.py").is_file() or not (root / "bench" / "bench_decide.py").is_file():
            raise SystemExit(f"{root}: not a tailguard checkout with fsm/decide.py and bench/bench_decide.py")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.p = subprocess.Popen([sys.executable, str(CHILD), str(root), str(ticks)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd="/")  # fmt: skip

    def round(self) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("round\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit("a child died (its stderr is above)")
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        if self.p.stdin is not None and self.p.poll() is None:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        self.p.wait(60)


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f}"


def _steady(rounds: list[dict[str, Any]]) -> tuple[float, float]:
    """(median, p99) over the ticks of each tick's median CPU time over the rounds."""
    per_tick = sorted(statistics.median(ts) for ts in zip(*(r["cpu_ns"] for r in rounds), strict=True))
    return statistics.median(per_tick), per_tick[int(0.99 * (len(per_tick) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout of the code to compare against (e.g. fdec899)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per side (after one warm-up round)")
    ap.add_argument("--ticks", type=int, default=1500, help="ticks of bench_decide's stream per round")
    args = ap.parse_args()
    if args.rounds < 1 or args.ticks < 100:
        raise SystemExit("--rounds must be >= 1 and --ticks >= 100 (a p99 of fewer ticks is one tick)")
    base = Path(args.base).resolve()
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')} {platform.machine()} CPython {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; "
          f"base {base}, new {HERE}, {args.ticks} ticks per round", flush=True)  # fmt: skip
    sides = {"base": Side(base, args.ticks), "new": Side(HERE, args.ticks)}
    got: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
    t0 = time.perf_counter()
    try:
        for k in range(1 + args.rounds):
            order = ("base", "new") if k % 2 == 0 else ("new", "base")
            for name in order:
                r = sides[name].round()
                if k >= 1:
                    got[name].append(r)
    finally:
        for s in sides.values():
            s.close()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; "
          f"{time.perf_counter() - t0:.0f} s\n")  # fmt: skip
    cols = ("round", "base median ms", "base p99 CPU ms", "new median ms", "new p99 CPU ms", "new/base median",
            "new/base p99 CPU", "base p99 wall ms", "new p99 wall ms", "base median CPU ms",
            "new median CPU ms")  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med_ratios, p99_ratios = [], []
    for i, (b, n) in enumerate(zip(got["base"], got["new"], strict=True), 1):
        rm = n["median_wall_ns"] / b["median_wall_ns"]
        rp = n["p99_cpu_ns"] / b["p99_cpu_ns"]
        med_ratios.append(rm)
        p99_ratios.append(rp)
        print(f"| {i} | {_ms(b['median_wall_ns'])} | {_ms(b['p99_cpu_ns'])} | {_ms(n['median_wall_ns'])} | "
              f"{_ms(n['p99_cpu_ns'])} | {rm:.2f} | {rp:.2f} | {_ms(b['p99_wall_ns'])} | {_ms(n['p99_wall_ns'])} | "
              f"{_ms(b['median_cpu_ns'])} | {_ms(n['median_cpu_ns'])} |")  # fmt: skip
    # The per-round p99 is the 16th dearest of 1,500 ticks in that round: where a tree has many
    # ticks of about the same cost near it (fdec899's ~170 hold ticks), the noise of one round
    # lifts its 16th dearest more than it lifts a tree whose dearest ticks stand apart. Each tick's
    # median over the rounds first, then the p99 of those: the cost of the tick at the p99's rank.
    steady = {name: _steady(rs) for name, rs in got.items()}
    print(f"\nper-tick medians over the rounds: base median {_ms(steady['base'][0])}, p99 {_ms(steady['base'][1])} ms; "
          f"new median {_ms(steady['new'][0])}, p99 {_ms(steady['new'][1])} ms; new/base median "
          f"{steady['new'][0] / steady['base'][0]:.2f}x, p99 {steady['new'][1] / steady['base'][1]:.2f}x")  # fmt: skip
    decisions = {name: sorted({r["decisions"] for r in rs}) for name, rs in got.items()}
    print(f"\nmedian of the per-round ratios: median {statistics.median(med_ratios):.2f}x, "
          f"p99 CPU {statistics.median(p99_ratios):.2f}x (issue 10's goal: <= 1.0x and <= 0.7x); "
          f"decisions per round: base {decisions['base']}, new {decisions['new']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
