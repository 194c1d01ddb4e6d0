"""`tailguard demo`: the main job on the bundled default, no GPU and no root needed.

With the replay package's default scenario available it runs the policy ablation and writes the
plot; `--synthetic` runs the decision core on a small closed-loop toy host instead and prints every
decision it makes (real output of the real decide()).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from typing import Any

from fsm.decide import decide
from fsm.examples import ToyPlant, example_spec
from fsm.state import ControllerState


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the bundled demo (no GPU, no root)")
    p.add_argument("--synthetic", action="store_true", help="toy closed-loop host instead of the replay")
    p.add_argument("--ticks", type=int, default=400, help="ticks of the synthetic demo")
    p.add_argument("--out", default="out", help="directory for the replay's JSON and plot")
    p.set_defaults(func=run)


def run_synthetic(ticks: int) -> int:
    spec = example_spec()
    state = ControllerState()
    plant = ToyPlant()
    print("synthetic host: 4x A100-SXM4-40GB in pairs behind PCIe switches; 'llm' (p99 SLO 15 ms) shares")
    print("a switch and an NVMe drive with 'etl', which bursts to 3 GB/s for 180 s every 400 s.\n")
    n_events = 0
    for _ in range(ticks):
        obs = plant.observe()
        d = decide(state, obs, spec)
        state = d.state
        plant.apply(d.desired)
        llm = obs.tenants["llm"].latency
        for e in d.events:
            n_events += 1
            p99 = f"{llm.p99 * 1000:5.1f} ms" if llm and llm.p99 is not None else "   n/a"
            print(f"t={e.t:7.0f}s p99={p99}  {e.tenant}: {e.kind:8s} {e.level_from} -> {e.level_to}  {e.reason}")
    levels = {n: c.level.value for n, c in state.tenants.items()}
    print(f"\n{ticks} ticks, {n_events} decisions; final levels: {levels}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.synthetic or importlib.util.find_spec("replay.cmd_replay") is None:
        return run_synthetic(args.ticks)
    cmd_replay = importlib.import_module("replay.cmd_replay")
    return int(cmd_replay.demo(args.out))
