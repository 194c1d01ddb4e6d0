"""decide()'s cost in instructions (valgrind's cachegrind), for trees compared on a loaded, drifting VM
where wall and CPU times move by 1.5x within minutes: the count does not.

For each tree: bench_decide's stream (600 ticks), decided once to record each tick's input state,
then a set of ticks replayed K times under `valgrind --tool=cachegrind --cache-sim=no`; the
instructions of one replay are (I(K=3) - I(K=1)) / 2, which leaves out the interpreter's start, the
imports and the stream's construction. Sets: `calm` (80 ticks of the calm phases: the median's
kind) and `heavy` (the ticks on which four victims escalate at once, with that tree's own policy:
the p99's kind; their number differs between trees).

Run: .venv/bin/python -m bench.decide_instructions TREE [TREE ...]   (needs valgrind; ~1 min per tree)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TICKS = 600
CALM = [*range(10, 50), *range(110, 150)]


def child(root: str, which: str, k: int) -> None:
    sys.path.insert(0, root)
    import bench.bench_decide as bd
    import fsm.ladder as ladder
    from fsm.decide import decide
    from fsm.state import ControllerState

    assert bd.__file__ is not None and bd.__file__.startswith(root), bd.__file__
    spec, homes = bd.build()
    obs = [bd.observation(spec, homes, i) for i in range(TICKS)]
    escalations: dict[int, int] = {}
    now = [0]
    real = ladder.Tick._escalate

    def counted(self: Any, *a: Any, **kw: Any) -> Any:
        escalations[now[0]] = escalations.get(now[0], 0) + 1
        return real(self, *a, **kw)

    ladder.Tick._escalate = counted  # type: ignore[method-assign]
    state, states = ControllerState(), []
    for i, o in enumerate(obs):
        now[0] = i
        states.append(state)
        state = decide(state, o, spec).state
    ladder.Tick._escalate = real  # type: ignore[method-assign]
    ticks = CALM if which == "calm" else sorted(i for i, n in escalations.items() if n >= 4)
    print(len(ticks), file=sys.stderr)
    for _ in range(k):
        for i in ticks:
            decide(states[i], obs[i], spec)


def instructions(root: Path, which: str, k: int) -> tuple[int, int]:
    """(instructions, ticks in the set) of one run with K replays."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, __file__, "--child", str(root), which, str(k)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd="/", check=False)
    m = re.search(r"I\s+refs:\s+([\d,]+)", p.stderr)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{root}: valgrind failed:\n{p.stderr[-2000:]}")
    ticks = next((ln for ln in p.stderr.splitlines() if ln.strip().isdigit()), "0")  # the child's count
    return int(m.group(1).replace(",", "")), int(ticks)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="tailguard checkouts (with fsm/ and bench/bench_decide.py)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print("| tree | set | ticks | instructions per tick (millions) |")
    print("|---|---|---|---|")
    for tree in args.trees:
        root = Path(tree).resolve()
        for which in ("calm", "heavy"):
            one, n = instructions(root, which, 1)
            three, _ = instructions(root, which, 3)
            print(f"| {root} | {which} | {n} | {(three - one) / 2 / max(n, 1) / 1e6:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
