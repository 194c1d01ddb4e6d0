"""A replay judges the tail over the run: a run shorter than the outage budget's window is decided
under the window capped at the run (runner.judged_policy), and says so; with --keep-window it is
decided under the configured window and warns when an outage was bought that the run cannot repay."""

from __future__ import annotations

import json

from controller.cli import main
from replay.report import horizon_note, summarise
from replay.runner import judged_policy, run_host
from replay.scenario import load_scenario
from replay.suite import gate_problems


def test_the_window_is_capped_at_a_shorter_run_only() -> None:
    p = load_scenario("vllm-ttft").hosts[0].spec.policy
    assert judged_policy(p, 3600.0).outage_budget_window_s == 3600.0
    assert judged_policy(p, 3600.0, keep_window=True) is p
    assert judged_policy(p, 86400.0) is p
    assert judged_policy(p, p.outage_budget_window_s) is p


def test_an_hour_of_vllm_ttft_is_no_worse_than_doing_nothing_when_judged_over_it() -> None:
    """The default hour with the 4 h window bought a 60 s relaunch whose held requests were the
    hour's p99 (docs/results.md); judged over the hour, no relaunch fits its error budget."""
    sc = load_scenario("vllm-ttft")
    window = sc.hosts[0].spec.policy.outage_budget_window_s
    runs = {p: [run_host(sc, 0, p, 3600.0, sc.meta.seed)] for p in ("static", "full")}
    kept = [run_host(sc, 0, "full", 3600.0, sc.meta.seed, keep_window=True)]
    assert runs["full"][0].outage_window_s == 3600.0 and kept[0].outage_window_s == window
    rows = summarise(sc, runs)
    assert not [g for g in gate_problems(rows["static"], rows["full"]) if g.startswith(("p99", "over"))]
    assert all(c.get("cost_requests", 0) == 0 for c in runs["full"][0].lever_costs)  # no outage bought
    worse = summarise(sc, {"static": runs["static"], "full": kept})
    assert worse["full"]["p99_ms"] > 10 * worse["static"]["p99_ms"]  # the relaunch made the p99

    note = horizon_note(sc, 3600.0, runs, keep_window=False)
    assert note is not None and f"({window:g} s) was capped at its 3600 s" in note
    kept_note = horizon_note(sc, 3600.0, {"static": runs["static"], "full": kept}, keep_window=True)
    assert kept_note is not None and "of full " in kept_note and "outage_budget_window_s" in kept_note
    # A run as long as the window needs no note; nor, with the window kept, one that bought no outage.
    assert horizon_note(sc, window, runs, keep_window=False) is None
    assert horizon_note(sc, 3600.0, {"static": runs["static"]}, keep_window=True) is None


def test_the_cli_says_which_window_it_decided_under(tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    rc = main(["replay", "p4d-demo", "--policies", "static", "--jobs", "1", "--duration", "300", "--json", str(out)])
    assert rc == 0
    assert "capped at its 300 s" in capsys.readouterr().out
    assert json.loads(out.read_text())["outage_budget_window_s"] == 300.0
    rc = main(["replay", "p4d-demo", "--policies", "static", "--jobs", "1", "--duration", "300", "--keep-window"])
    assert rc == 0
    assert "capped" not in capsys.readouterr().out
