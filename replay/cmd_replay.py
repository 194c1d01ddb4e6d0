"""`tailguard replay`: the policy ablation on a scenario, or a shadow replay of a recorded trace.

tailguard replay [SCENARIO] [--policies a,b] [--duration S] [--seed N] [--json OUT] [--plot OUT.png]
                 [--exact-latency]
tailguard replay --shadow PATH [--quiet] [--executor local|ray[:ADDRESS]] [--json OUT]
tailguard replay --suite [--duration S] [--seed N] [--json OUT] [--jobs N]

--executor local|ray[:ADDRESS] (every form): where the runs go (replay/executor.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Any

from schema.outputs import check_output_dir, check_output_file, write_output

DEFAULT_SCENARIO = "paper-p4d"
DEFAULT_POLICIES = "static,guards-only,placement-only,mig-only,full"
DEFAULT_DURATION_S = 3600.0  # one simulated hour: one full on/off cycle of paper-p4d, a few seconds


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="compare policies on a simulated scenario, or shadow-replay a recorded trace",
        description="Run the real decision core against the host simulator under each policy and print "
        "one table (for paper-p4d with the paper's numbers beside ours); or, with --shadow, "
        "print what the controller would have decided on a recorded observation trace.",
    )
    p.add_argument("scenario", nargs="?", default=DEFAULT_SCENARIO, help="bundled name or TOML path")
    p.add_argument("--policies", default=DEFAULT_POLICIES)
    p.add_argument("--duration", type=float, default=None, help="simulated seconds (default: the scenario's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write the latency CDF and isolation-level plot")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    p.add_argument(
        "--exact-latency",
        action="store_true",
        help="the controller sees each window's raw latencies (idealised) instead of vLLM's TTFT histogram",
    )
    p.add_argument(
        "--keep-window",
        action="store_true",
        help="keep [policy] outage_budget_window_s even when the run is shorter (by default a replay judges the "
        "tail over the run and caps the window at it: over a shorter span one relaunch can make the p99)",
    )
    p.add_argument(
        "--executor",
        default=None,
        metavar="local|ray[:ADDRESS]",
        help="where the runs go: local (a process pool of --jobs, the default), ray (a local Ray on loopback) "
        "or ray:ADDRESS (join that Ray cluster); needs tailguard[fleet] for ray",
    )
    p.add_argument(
        "--shadow",
        metavar="PATH",
        help="shadow-replay recorded observation traces instead: a trace file (tick by tick), or a directory or "
        "glob of them (one task per host, its rotated files in order; a fleet summary, worst hosts first)",
    )
    p.add_argument("--quiet", action="store_true", help="with --shadow: only the summary")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("CURRENT.toml", "CANDIDATE.toml"),
        help="with --shadow: a policy canary, each file only a [policy] table laid over every trace's recorded "
        "spec; decisions per host",
    )
    p.add_argument(
        "--from-trace",
        action="store_true",
        help="with --compare: also each host rebuilt from its recording (scenario from-trace) and simulated under "
        "both policies (simulated outcomes)",
    )
    p.add_argument(
        "--suite",
        action="store_true",
        help="every suite scenario at its suite_duration_s (or --duration) under the five policies and the "
        "hindsight oracle; one matrix",
    )
    p.set_defaults(func=run)


def _run_args_problem(args: argparse.Namespace) -> str:
    """What is wrong with --duration or --seed ("" when nothing is)."""
    from replay.scenario import MAX_DURATION_S

    if args.duration is not None and not 0 < args.duration <= MAX_DURATION_S:
        return f"--duration must be a positive number of seconds, at most {MAX_DURATION_S:.0f} (31 days)"
    if args.seed is not None and args.seed < 0:
        return "--seed must be a non-negative integer (it seeds numpy's generators)"
    return ""


def _duration_problem(duration: float | None, scenarios: list[Any]) -> str:
    """What is wrong with --duration for these scenarios ("" when nothing is): a run shorter than
    one tick (it ran one tick and printed figures as though of the run asked for)."""
    for sc in scenarios:
        if duration is not None and duration < sc.meta.tick_s:
            return f"--duration {duration:g} is shorter than one tick of {sc.name} (tick_s = {sc.meta.tick_s:g} s)"
    return ""


def _err(msg: str) -> int:
    print(f"tailguard replay: {msg}", file=sys.stderr)
    return 2


def _executor(args: argparse.Namespace) -> Any:
    """The --executor asked for (default: the local pool of --jobs); ExecutorError on a bad one."""
    from replay.executor import make_executor

    return make_executor(getattr(args, "executor", None) or "local", args.jobs)


def run(args: argparse.Namespace) -> int:
    from replay.executor import ExecutorError

    if args.shadow:
        from replay.cmd_fleet import fleet_mode, run_fleet

        if fleet_mode(args):
            return run_fleet(args)
        return run_shadow(args.shadow, args.quiet)
    if getattr(args, "executor", None) is not None:
        from replay.executor import parse_executor

        try:
            parse_executor(args.executor)  # before anything slow
        except ExecutorError as e:
            return _err(str(e))
    if getattr(args, "suite", False):
        return run_suite(args)
    from replay import report
    from replay.runner import POLICIES, run_all
    from replay.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as e:
        return _err(str(e))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        return _err(f"--policies: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(POLICIES)}")
    duration = args.duration if args.duration is not None else scenario.meta.duration_s
    bad_arg = _run_args_problem(args) or _duration_problem(args.duration, [scenario])
    if bad_arg:
        return _err(bad_arg)
    # Output paths and the plotting library before the long part, not after it.
    for opt, path in (("--json", args.json_out), ("--plot", args.plot)):
        if path:
            why = check_output_file(path)
            if why:
                return _err(f"{opt} {path}: {why}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return _err("--plot needs matplotlib (pip install 'tailguard[plot]')")
    seed = args.seed if args.seed is not None else scenario.meta.seed
    t0 = time.monotonic()
    need = policies if "static" in policies else [*policies, "static"]  # throughput is vs static
    exact = bool(getattr(args, "exact_latency", False))
    keep = bool(getattr(args, "keep_window", False))
    try:
        executor = _executor(args)
    except ExecutorError as e:
        return _err(str(e))
    where: dict[str, Any] = {"executor": "local"}
    try:
        runs = run_all(
            scenario,
            need,
            duration,
            seed,
            jobs=args.jobs,
            progress=True,
            exact_latency=exact,
            executor=executor,
            keep_window=keep,
        )
        if executor is not None:
            where = executor.describe()
    finally:
        if executor is not None:
            executor.shutdown()
    shown = {p: runs[p] for p in policies}
    summary = report.summarise(scenario, shown, baseline=runs["static"])
    view = "raw samples (--exact-latency)" if exact else "vLLM's TTFT histogram"
    print(
        f"scenario {scenario.name}: {len(scenario.hosts)} host(s), {duration:g} simulated s, seed {seed}; "
        f"the controller sees latency through {view}"
    )
    print(report.table(scenario, summary))
    print(
        f"({time.monotonic() - t0:.1f} s; p50/p99/p999 over all sensitive requests; SLO viol. = share of "
        f"windows over the SLO (n/a: none counted); bad req. = share of requests over their tenant's SLO, "
        f"rejected ones included; thr = work vs static (sensitive: requests served); actions and "
        f"reconfigurations per host-hour)"
    )
    note = report.horizon_note(scenario, duration, shown, keep)
    if note:
        print(note)
    if args.json_out:
        text = _with_executor(
            report.to_json(
                scenario, seed, duration, summary, exact_latency=exact, outage_window_s=report.judged_window(runs)
            ),
            where,
        )
        why = write_output(args.json_out, text)
        if why:
            return _err(f"--json {args.json_out}: {why}")
    if args.plot:
        try:
            report.plot(scenario, shown, args.plot)
        except ImportError:
            return _err("--plot needs matplotlib (pip install 'tailguard[plot]')")
        except OSError as e:
            return _err(f"--plot {args.plot}: {e.strerror or e}")
    return 0


def _with_executor(text: str, where: dict[str, Any]) -> str:
    """report.to_json's document with where it ran ("executor", and "ray_version" under Ray)."""
    import json

    doc = json.loads(text)
    doc.update(where)
    return json.dumps(doc, indent=2) + "\n"


def run_suite(args: argparse.Namespace) -> int:
    import json

    from replay.scenario import ScenarioError, suite
    from replay.suite import matrix, timed_suite

    bad_arg = _run_args_problem(args)
    if bad_arg:
        return _err(bad_arg)
    if args.jobs is not None and args.jobs < 1:
        return _err("--jobs must be at least 1")
    if args.policies != DEFAULT_POLICIES:
        return _err("--policies: not with --suite (the suite runs all five and the oracle)")
    for opt, given in (("--plot", args.plot), ("--exact-latency", getattr(args, "exact_latency", False))):
        if given:
            return _err(f"{opt}: not with --suite (the suite's runs use vLLM's histogram view, no plot)")
    if args.json_out:  # before the long part, not after it
        why = check_output_file(args.json_out)
        if why:
            return _err(f"--json {args.json_out}: {why}")
    try:
        scenarios = suite()
    except ScenarioError as e:
        return _err(str(e))
    bad_arg = _duration_problem(args.duration, scenarios)
    if bad_arg:
        return _err(bad_arg)
    from replay.executor import ExecutorError

    try:
        executor = _executor(args)
    except ExecutorError as e:
        return _err(str(e))
    try:
        doc, wall = timed_suite(
            scenarios,
            args.duration,
            args.seed,
            args.jobs,
            executor=executor,
            progress=True,
            keep_window=bool(getattr(args, "keep_window", False)),
        )
    finally:
        if executor is not None:
            executor.shutdown()
    print(
        f"suite: {len(scenarios)} scenarios, {len(doc['suite'])} x 6 rows, {wall:.1f} s wall, "
        f"executor {doc['executor']}"
    )
    print(matrix(doc["suite"]))
    print(
        "(p99/p999 over all sensitive requests; bad req. = share of sensitive requests over their SLO; "
        "others thr = lowest work ratio of the other tenants vs static; actions per host-hour)"
    )
    if args.json_out:
        why = write_output(args.json_out, json.dumps(doc, indent=2) + "\n")
        if why:
            return _err(f"--json {args.json_out}: {why}")
    return 0


def run_shadow(path: str, quiet: bool) -> int:
    from replay.shadow import describe_desired, format_event, shadow
    from replay.trace import TraceError

    def cut(line: int) -> None:
        print(f"tailguard replay: warning: {path}:{line}: line cut short (the recorder stopped mid-write);"
              " skipped", file=sys.stderr, flush=True)  # fmt: skip

    try:
        header, ticks, summary = shadow(path, on_cut=cut)
        print(f"trace {path}: host {header.host}, recorded {header.created}, schema {header.schema}")
        last = ""
        for t, events, desired in ticks:
            if quiet:
                continue
            for e in events:
                print(format_event(e))
            # The desired state, whenever it changes (expiry renewals aside).
            now = describe_desired(desired)
            if now != last:
                print(f"t={t:10.1f}  desired: {now}")
                last = now
    except TraceError as e:
        return _err(str(e))
    span = (summary.last_t - summary.first_t) if summary.first_t is not None and summary.last_t is not None else 0.0
    print(f"\n{summary.ticks} ticks over {span:.0f} s; decisions: {dict(sorted(summary.events.items())) or 'none'}")
    if summary.levers:
        print(f"escalations by lever: {dict(sorted(summary.levers.items()))}")
    print(f"final levels: {summary.final_levels or 'no sensitive tenant'}")
    if summary.cut_lines:
        print(f"lines cut short and skipped: {', '.join(map(str, summary.cut_lines))}")
    if summary.bad_input:
        print(f"bad input values (ignored): {summary.bad_input}")
    return 0


def demo(out_dir: str) -> int:
    """`make demo`: the default scenario, all policies, JSON and plot into out_dir."""
    why = check_output_dir(out_dir)
    if why:
        print(f"tailguard demo: --out {out_dir}: {why}", file=sys.stderr)
        return 2
    ns = argparse.Namespace(
        shadow=None,
        quiet=False,
        scenario=DEFAULT_SCENARIO,
        policies=DEFAULT_POLICIES,
        duration=None,
        seed=None,
        json_out=os.path.join(out_dir, "replay.json"),
        plot=os.path.join(out_dir, "replay.png"),
        jobs=None,
        executor=None,
        suite=False,
        exact_latency=False,
    )
    from replay.scenario import ScenarioError, load_scenario

    try:
        hours = load_scenario(DEFAULT_SCENARIO).meta.duration_s / 3600
    except ScenarioError as e:
        return _err(str(e))
    print(f"== tailguard demo: the policy replay of {DEFAULT_SCENARIO}, {hours:g} simulated hour(s) ==")
    rc = run(ns)
    if rc == 0:
        print(f"wrote {ns.json_out} and {ns.plot}")
        print(
            f"\nThis table covers {hours:g} simulated hour(s): one interference episode, which the evidence"
            " may not yet find worth more than a guard. README.md ('Results') and docs/results.md show"
            " 24 simulated hours: tailguard replay paper-p4d --duration 86400."
        )
    return rc
