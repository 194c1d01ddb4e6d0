"""replay warns when a run is shorter than the span its moves and resizes are budgeted over."""

from __future__ import annotations

from replay.report import horizon_note
from replay.runner import run_host
from replay.scenario import load_scenario


def test_short_run_with_a_priced_relaunch_gets_the_note() -> None:
    sc = load_scenario("vllm-ttft")
    window = sc.hosts[0].spec.policy.outage_budget_window_s
    full = [run_host(sc, 0, "full", 3600.0, sc.meta.seed)]
    static = [run_host(sc, 0, "static", 3600.0, sc.meta.seed)]
    assert any(c.get("cost_requests", 0) > 0 for c in full[0].lever_costs)  # the 60 s relaunch, priced
    note = horizon_note(sc, 3600.0, {"static": static, "full": full})
    assert note is not None
    assert "3600 s" in note and f"{window:g} s" in note and "outage_budget_window_s" in note
    assert "of full " in note  # names the policy that bought it, not static
    # A run as long as the window, or one in which nothing paid an outage, needs no note.
    assert horizon_note(sc, window, {"full": full}) is None
    assert horizon_note(sc, 3600.0, {"static": static}) is None
