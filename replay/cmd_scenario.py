"""`tailguard scenario from-trace TRACE [--out S.toml]`: a scenario rebuilt from a recorded host
(replay/fromtrace.py says what is estimated and what is assumed)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from schema.outputs import check_output_file


def register(sub: Any) -> None:
    p = sub.add_parser("scenario", help="build a scenario (from-trace: from a recorded host)")
    ssub = p.add_subparsers(dest="scenario_cmd", required=True)
    f = ssub.add_parser(
        "from-trace",
        help="rebuild a scenario from a `tailguard record` trace",
        description="Estimate a recorded host's request rates, service times and aggressors' flows and "
        "schedules, and write them as a scenario TOML (to stdout, or --out). Header comments say what it assumed.",
    )
    f.add_argument("trace", metavar="TRACE", help="a trace file written by `tailguard record`")
    f.add_argument("--out", metavar="S.toml", help="write the scenario here instead of stdout")
    f.set_defaults(func=run)


def _err(msg: str) -> int:
    print(f"tailguard scenario: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from replay.fromtrace import FromTraceError, from_trace
    from replay.scenario import ScenarioError, load_scenario
    from replay.trace import TraceError

    if args.out:
        why = check_output_file(args.out)
        if why:
            return _err(f"--out {args.out}: {why}")
    try:
        est, text = from_trace(args.trace)
    except TraceError as e:
        return _err(str(e))
    except FromTraceError as e:
        return _err(f"{args.trace}: {e}")
    if not args.out:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        return _err(f"--out {args.out}: {e.strerror or e}")
    try:
        load_scenario(args.out)  # what we wrote must load: a defect here is ours, said plainly
    except ScenarioError as e:
        return _err(f"the rebuilt scenario does not load (a bug in from-trace): {e}")
    rates = ", ".join(f"{n} {r:.2f} req/s, {est.compute_ms[n]:.3f} ms compute" for n, r in est.rate.items())
    print(
        f"wrote {args.out}: host {est.name}, {est.duration_s:g} s; {rates}; "
        f"{len(est.assumed)} assumptions in its header"
    )
    return 0
