"""decide()'s cost in instructions (valgrind's cachegrind), for trees compared on a loaded, drifting VM
where wall and CPU times move by 1.5x within minutes: the count does not.

For each tree: bench_decide's stream, decided once to record each tick's input state, then a set of
ticks replayed K times under `valgrind --tool=cachegrind --cache-sim=no`; the instructions of one
replay are (I(K=3) - I(K=1)) / 2, which leaves out the interpreter's start, the imports and the
stream's construction. The child runs with PYTHONHASHSEED=0 and the recorded states frozen out of
the garbage collector's way (gc.freeze): without both the same tree's count moved by up to 20%
from one run to the next (string hashes order sets; a full collection over 1,500 recorded states
lands in one run's replays and not another's).

Sets: `calm` (80 ticks of the calm phases: the median's kind) and `heavy` (the ticks on which four
victims escalate at once, with that tree's own policy: the p99's kind; their number differs between
trees), both over the first 600 ticks; and over the 1,500 ticks of bench_ab_decide, the heavy ticks
split three ways: `rank` (a move's ranking of free instances runs), `hold` (four escalations, no
ranking, no event) and `event` (four escalations that emit events, no ranking). The p99 of 1,500
ticks is the 16th dearest, so the sizes of those sets say which kind sets it.

Run: .venv/bin/python -m bench.decide_instructions [--sets calm,heavy] TREE [TREE ...]
(needs valgrind; ~1 min per tree and set)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TICKS = 600
AB_TICKS = 1500  # bench_ab_decide's stream, for the rank / hold / event sets
SETS = ("calm", "heavy", "rank", "hold", "event")
CALM = [*range(10, 50), *range(110, 150)]


def child(root: str, which: str, k: int) -> None:
    sys.path.insert(0, root)
    import gc
    import importlib

    import bench.bench_decide as bd
    import fsm.ladder as ladder
    from fsm.decide import decide
    from fsm.state import ControllerState

    assert bd.__file__ is not None and bd.__file__.startswith(root), bd.__file__
    try:  # where the ladder calls the ranking from (fdec899: fsm.ladder itself)
        ranker: Any = importlib.import_module("fsm.tick_moves")
    except ImportError:
        ranker = ladder
    spec, homes = bd.build()
    obs = [bd.observation(spec, homes, i) for i in range(TICKS if which in ("calm", "heavy") else AB_TICKS)]
    escalations: dict[int, int] = {}
    ranked: set[int] = set()
    with_events: set[int] = set()
    now = [0]
    real, real_rank = ladder.Tick._escalate, ranker.rank_candidates

    def counted(self: Any, *a: Any, **kw: Any) -> Any:
        escalations[now[0]] = escalations.get(now[0], 0) + 1
        return real(self, *a, **kw)

    def rank(*a: Any, **kw: Any) -> Any:
        ranked.add(now[0])
        return real_rank(*a, **kw)

    ladder.Tick._escalate = counted  # type: ignore[method-assign]
    ranker.rank_candidates = rank
    state, states = ControllerState(), []
    for i, o in enumerate(obs):
        now[0] = i
        states.append(state)
        d = decide(state, o, spec)
        state = d.state
        if d.events:
            with_events.add(i)
    ladder.Tick._escalate = real  # type: ignore[method-assign]
    ranker.rank_candidates = real_rank
    heavy = sorted(i for i, n in escalations.items() if n >= 4)
    ticks = {
        "calm": CALM,
        "heavy": heavy,
        "rank": sorted(ranked),
        "hold": [i for i in heavy if i not in ranked and i not in with_events],
        "event": [i for i in heavy if i not in ranked and i in with_events],
    }[which]
    print(len(ticks), file=sys.stderr)
    gc.collect()
    gc.freeze()  # the recorded states: no full collection over them in one run's replays only
    for _ in range(k):
        for i in ticks:
            decide(states[i], obs[i], spec)


def instructions(root: Path, which: str, k: int) -> tuple[int, int]:
    """(instructions, ticks in the set) of one run with K replays."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, __file__, "--child", str(root), which, str(k)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # set orders, hence the count, the same every run
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd="/", env=env, check=False)
    m = re.search(r"I\s+refs:\s+([\d,]+)", p.stderr)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{root}: valgrind failed:\n{p.stderr[-2000:]}")
    ticks = next((ln for ln in p.stderr.splitlines() if ln.strip().isdecimal()), "0")  # the child's count
    return int(m.group(1).replace(",", "")), int(ticks)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="tailguard checkouts (with fsm/ and bench/bench_decide.py)")
    ap.add_argument("--sets", default="calm,heavy", help=f"comma-separated, of {', '.join(SETS)}")
    args = ap.parse_args()
    sets = args.sets.split(",")
    if not sets or any(w not in SETS for w in sets):
        raise SystemExit(f"--sets: choose among {', '.join(SETS)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print("| tree | set | ticks | instructions per tick (millions) |")
    print("|---|---|---|---|")
    for tree in args.trees:
        root = Path(tree).resolve()
        for which in sets:
            one, n = instructions(root, which, 1)
            three, _ = instructions(root, which, 3)
            print(f"| {root} | {which} | {n} | {(three - one) / 2 / max(n, 1) / 1e6:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
