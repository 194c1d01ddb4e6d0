"""`tailguard replay --shadow PATH` over a fleet: one task per host on the chosen executor, one
table (worst hosts first) and one JSON. Decisions only: nothing here is simulated."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from schema.outputs import check_output_file, write_output


def _err(msg: str) -> int:
    print(f"tailguard replay: {msg}", file=sys.stderr)
    return 2


def fleet_mode(args: argparse.Namespace) -> bool:
    """A single trace file without --executor/--json keeps the tick-by-tick shadow output."""
    return (
        not os.path.isfile(args.shadow)
        or getattr(args, "compare", None) is not None
        or getattr(args, "executor", None) is not None
        or bool(getattr(args, "json_out", None))
    )


def run_fleet(args: argparse.Namespace) -> int:
    from replay.executor import Bar, ExecutorError, make_executor, results_in_order
    from replay.fleet import FleetPathError, expand, fleet_table, host_object, shadow_host, worst_first

    try:
        hosts = expand(args.shadow)
    except FleetPathError as e:
        return _err(str(e))
    if args.json_out:
        why = check_output_file(args.json_out)
        if why:
            return _err(f"--json {args.json_out}: {why}")
    compare = getattr(args, "compare", None)
    if getattr(args, "from_trace", False) and not compare:
        return _err("--from-trace goes with --compare CURRENT.toml CANDIDATE.toml")
    tables = None
    if compare:
        from replay.canary import CanaryError, load_policy_table

        try:
            tables = (load_policy_table(compare[0]), load_policy_table(compare[1]))
        except CanaryError as e:
            return _err(f"--compare {e}")
    t0 = time.monotonic()
    try:
        executor = make_executor(getattr(args, "executor", None), args.jobs)
    except ExecutorError as e:
        return _err(str(e))
    if tables is not None:
        return _run_canary(args, hosts, tables, executor, t0)
    with executor:
        bar = Bar(len(hosts), "hosts")
        results = results_in_order([executor.submit(shadow_host, (h, None)) for h in hosts], bar)
        bar.done()
        where = executor.describe()
    wall = time.monotonic() - t0
    failed = [r for r in results if r.error is not None]
    print(
        f"fleet shadow replay of {args.shadow}: {len(results)} host(s), {wall:.1f} s wall, executor {where['executor']}"
    )
    print("decisions: what the controller would have done on what each host recorded (nothing simulated)")
    print(fleet_table(results))
    print(
        "(rec. over SLO = share of the recorded latency windows (sensitive tenants, enough requests) whose "
        "quantile was over the SLO: a recorded measurement; actions/h = escalations + releases per recorded hour)"
    )
    for r in failed:
        print(f"tailguard replay: {r.error}", file=sys.stderr)
    if args.json_out:
        doc: dict[str, Any] = {
            "kind": "fleet-shadow",
            "path": args.shadow,
            "figures": "decisions",
            "hosts": [host_object(r) for r in worst_first(results)],
            "failed": len(failed),
            "wall_s": round(wall, 2),
            **where,
        }
        why = write_output(args.json_out, json.dumps(doc, indent=2) + "\n")
        if why:
            return _err(f"--json {args.json_out}: {why}")
    return 1 if failed else 0


def _run_canary(
    args: argparse.Namespace, hosts: list[Any], tables: tuple[dict[str, Any], dict[str, Any]], executor: Any, t0: float
) -> int:
    from replay.canary import canary_host, canary_object, canary_tables
    from replay.executor import Bar, results_in_order

    simulate = bool(getattr(args, "from_trace", False))
    with executor:
        bar = Bar(len(hosts), "hosts")
        work = [(h, tables[0], tables[1], simulate) for h in hosts]
        results = results_in_order([executor.submit(canary_host, w) for w in work], bar)
        bar.done()
        where = executor.describe()
    wall = time.monotonic() - t0
    cur, cand = args.compare
    print(
        f"policy canary on {args.shadow}: current {cur}, candidate {cand}; {len(results)} host(s), {wall:.1f} s wall, "
        f"executor {where['executor']}"
    )
    print(canary_tables(results))
    # a policy whose shadow run fails, the candidate's as much as the current one's, is a failure
    failed = [r for r in results if r.current.error is not None or r.candidate.error is not None]
    for r in failed:
        for who, e in (("current", r.current.error), ("candidate", r.candidate.error)):
            if e is not None:
                print(f"tailguard replay: {who} policy: {e}", file=sys.stderr)
    if args.json_out:
        doc: dict[str, Any] = {
            "kind": "fleet-canary",
            "path": args.shadow,
            "current": cur,
            "candidate": cand,
            "figures": {
                "decisions": "shadow replay of the recordings",
                "simulated_outcomes": "simulator runs of "
                "hosts rebuilt from their recordings (null without --from-trace)",
            },
            "hosts": [canary_object(r) for r in results],
            "failed": len(failed),
            "wall_s": round(wall, 2),
            **where,
        }
        why = write_output(args.json_out, json.dumps(doc, indent=2) + "\n")
        if why:
            return _err(f"--json {args.json_out}: {why}")
    return 1 if failed else 0
