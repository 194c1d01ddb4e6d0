"""The lab's suite: arrival processes, rate profiles, rerouted aggressors, the hindsight oracle and
`tailguard replay --suite`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from controller.cli import main
from fsm.mig import is_valid
from fsm.observation import InstanceRef, Observation
from replay import oracle
from replay.arrivals import RequestStream
from replay.paths import DOWN
from replay.runner import HostRun, run_host
from replay.scenario import Requests, Scenario, ScenarioError, Schedule, bundled, parse_scenario, suite
from replay.simulator import HostSim
from replay.suite import SUITE_POLICIES, run_choice, run_oracle


def _arrivals(req: Requests, tick: float, until: float, seed: int = 1, tenant: int = 0) -> np.ndarray:
    st = RequestStream(req, Path("."), seed, 0, tenant)
    out = []
    t = 0.0
    while t < until:
        out.append(st.window(t, t + tick, 1.0)[0])
        t += tick
    return np.concatenate(out)


# -- arrival processes ---------------------------------------------------------------------------
def test_gamma_renewal_has_the_rate_and_cv_asked_for() -> None:
    a = _arrivals(Requests(rate=5.0, arrivals="gamma", cv=3.0, compute_ms=1.0), 5.0, 36_000.0)
    gaps = np.diff(a)
    assert a.size / 36_000.0 == pytest.approx(5.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)
    assert (gaps >= 0).all()


def test_mmpp_keeps_the_mean_rate_and_is_burstier_than_poisson() -> None:
    mm = Requests(rate=5.0, arrivals="mmpp", burst_ratio=8.0, burst_mean_s=10.0, calm_mean_s=25.0, compute_ms=1.0)
    a = _arrivals(mm, 5.0, 36_000.0)
    p = _arrivals(Requests(rate=5.0, compute_ms=1.0), 5.0, 36_000.0)
    assert a.size / 36_000.0 == pytest.approx(5.0, rel=0.08)

    def dispersion(x: np.ndarray) -> float:  # variance / mean of the counts in 10 s bins
        c = np.bincount((x // 10).astype(int))
        return float(c.var() / c.mean())

    assert dispersion(p) == pytest.approx(1.0, abs=0.15)
    # Two-state MMPP: bursts of 10 s at 8x the calm rate give an index of dispersion well above 1.
    assert dispersion(a) > 10


@pytest.mark.parametrize("kw", [{}, {"arrivals": "gamma", "cv": 2.5}, {"arrivals": "mmpp", "burst_ratio": 6.0}])
def test_arrivals_are_common_random_numbers(kw: dict[str, object]) -> None:
    """The draws depend on (seed, host, tenant) and time only: the tick length (what a policy's
    actuation could change) does not move a single arrival; another tenant gets other arrivals."""
    req = Requests(rate=20.0, compute_ms=1.0, **kw)
    a = _arrivals(req, 5.0, 3600.0)
    b = _arrivals(req, 2.0, 3600.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, _arrivals(req, 5.0, 3600.0))
    assert not np.array_equal(a[:50], _arrivals(req, 5.0, 3600.0, tenant=1)[:50])


def test_process_keys_are_checked() -> None:
    with pytest.raises(ValueError, match='cv: only with arrivals = "gamma"'):
        Requests(rate=1.0, compute_ms=1.0, cv=2.0)
    with pytest.raises(ValueError, match="burst_ratio: only with arrivals"):
        Requests(rate=1.0, compute_ms=1.0, burst_ratio=4.0)
    with pytest.raises(ValueError, match="only with rate"):
        Requests(trace="x.csv", compute_ms=1.0, arrivals="gamma")


def test_schedule_profile_interpolates_cyclically() -> None:
    s = Schedule(period_s=100.0, profile=[1.0, 0.0, 0.5, 0.5], level=2.0)
    assert s.active(0.0) == pytest.approx(2.0)
    assert s.active(12.5) == pytest.approx(1.0)  # halfway from 1.0 to 0.0
    assert s.active(87.5) == pytest.approx(1.5)  # halfway from 0.5 back to the first level
    assert s.active(100.0) == pytest.approx(2.0)
    assert s.peak() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="profile needs period_s"):
        Schedule(profile=[1.0, 0.5])


# -- a tiny host, hand-checkable ------------------------------------------------------------------
TINY = """
[scenario]
name = "tiny"
duration_s = 600
tick_s = 5.0
seed = 2
compute_coupling = 0.2

[policy]
min_window_count = 20

[[hosts]]
name = "h"
nodes = [
  { id = "numa0", kind = "numa", index = 0, cpus = "0-7" },
  { id = "rc0", kind = "root_complex", parent = "numa0" },
  { id = "sw0", kind = "switch", parent = "rc0", link_gbps = 24.0 },
  {id="gpu0", kind="gpu", parent="sw0", model="A100-SXM4-40GB", link_gbps=24.0, layout=["1g.5gb@0", "3g.20gb@4"]},
  { id = "gpu1", kind = "gpu", parent = "sw0", model = "A100-SXM4-40GB", link_gbps = 24.0, layout = ["7g.40gb@0"] },
  { id = "nvme0", kind = "nvme", parent = "sw0", link_gbps = 7.0, aliases = ["nvme0n1"] },
  { id = "nvme1", kind = "nvme", parent = "sw0", link_gbps = 7.0, aliases = ["nvme1n1"] },
  { id = "rc1", kind = "root_complex", parent = "numa0" },
  { id = "sw1", kind = "switch", parent = "rc1", link_gbps = 24.0 },
  { id = "gpu2", kind = "gpu", parent = "sw1", model = "A100-SXM4-40GB", link_gbps = 24.0, layout = ["7g.40gb@0"] },
  { id = "nvme2", kind = "nvme", parent = "sw1", link_gbps = 7.0, aliases = ["nvme2n1"] },
]

[[hosts.tenants]]
name = "v"
role = "sensitive"
instance = "gpu0/1g.5gb@0"
cgroup = "v.slice"
slo_ms = 15.0
[hosts.tenants.requests]
rate = 85.0
compute_ms = 1.0
slice_exponent = 0.8
bytes = 62e6
noise_cv = 0.25

[[hosts.tenants]]
name = "etl"
role = "bulk"
instance = "gpu1/7g.40gb@0"
cgroup = "etl.slice"
devices = ["nvme0n1", "nvme1n1"]
demand_gbps = 2.7
flows = [
  { path = ["nvme0", "cpu"] },
  { path = ["nvme1", "cpu"] },
  { path = ["cpu", "gpu1"] },
  { path = ["cpu", "gpu1"] },
]
"""


def _tiny(extra: str = "") -> Scenario:
    return parse_scenario(TINY + extra, "/tmp/tiny.toml")


def _inline(sc: Scenario, seed: int) -> oracle.Runner:
    def run_many(jobs: list[tuple[int, oracle.Choice, float]]) -> list[HostRun]:
        return [run_choice(sc, h, c, d, seed) for h, c, d in jobs]

    return run_many


def test_oracle_candidates_respect_the_layout_rules_and_the_others() -> None:
    model = _tiny().hosts[0]
    where = {n: t.instance for n, t in model.spec.tenants.items() if t.instance is not None}
    # Pruned: per GPU the largest profile that fits around the others (gpu1 is the ETL's: none).
    assert [str(i) for i in oracle.placements(model, "v", where)] == ["gpu0/7g.40gb@0", "gpu2/7g.40gb@0"]
    every = oracle.placements(model, "v", where, prune=False)
    assert {i.gpu for i in every} == {"gpu0", "gpu2"}
    assert InstanceRef("gpu0", "1g.5gb", 0) in every and InstanceRef("gpu2", "3g.20gb", 0) in every
    # The chosen layout keeps the others' instances, drops what overlaps, stays valid.
    moved = oracle.apply_choice(model, (("v", InstanceRef("gpu0", "7g.40gb", 0)),))
    assert [str(s) for s in moved.layouts["gpu0"]] == ["7g.40gb@0"]
    assert moved.layouts["gpu1"] == model.layouts["gpu1"]
    assert moved.spec.tenants["etl"].instance == model.spec.tenants["etl"].instance
    away = oracle.apply_choice(model, (("v", InstanceRef("gpu2", "3g.20gb", 0)),))
    assert away.layouts["gpu0"] == model.layouts["gpu0"]  # the old slot stays, free
    assert [str(s) for s in away.layouts["gpu2"]] == ["3g.20gb@0"]  # 7g overlapped: dropped
    assert all(is_valid(away.models[g], lay) for g, lay in away.layouts.items())


def test_oracle_exhaustive_finds_the_known_best() -> None:
    """On the tiny host the victim's tail comes from the ETL copies on its switch: the best static
    choice is the biggest slice behind the other switch (gpu2/7g); pruned and exhaustive agree,
    and it beats every other candidate run directly."""
    sc = _tiny()
    static = run_host(sc, 0, "static", 600.0, 2)
    res = oracle.search(sc, 0, 600.0, static, _inline(sc, 2))
    assert res.method == "exhaustive"
    assert oracle.describe(res.choice) == {"v": "gpu2/7g.40gb@0"}
    full = oracle.search(sc, 0, 600.0, static, _inline(sc, 2), prune=False)
    assert full.choice == res.choice and full.evaluated > res.evaluated
    model = sc.hosts[0]
    where = {n: t.instance for n, t in model.spec.tenants.items() if t.instance is not None}
    best = oracle.rank_key(sc, res.run, static, res.choice)
    for inst in oracle.placements(model, "v", where, prune=False):
        c = (("v", inst),)
        assert oracle.rank_key(sc, run_choice(sc, 0, c, 600.0, 2), static, c) >= best
    assert (
        oracle.judge(sc, res.run, static)["bad_request_fraction"]
        < oracle.judge(sc, static, static)["bad_request_fraction"]
    )
    assert res.run.actions == 0 and res.run.moves == 0 and res.run.reconfigs == 0


def test_oracle_is_deterministic() -> None:
    sc = _tiny()
    static = run_host(sc, 0, "static", 600.0, 2)
    a = oracle.search(sc, 0, 600.0, static, _inline(sc, 2))
    b = oracle.search(sc, 0, 600.0, run_host(sc, 0, "static", 600.0, 2), _inline(sc, 2))
    assert a.choice == b.choice
    np.testing.assert_array_equal(a.run.latencies, b.run.latencies)


def test_oracle_with_nowhere_to_go_keeps_the_layout() -> None:
    sc = load_no_free = suite_by_name("no-free-mig")
    static = run_host(sc, 0, "static", 300.0, 1)
    (res,) = run_oracle(load_no_free, 300.0, 1, [static], _InlinePool())
    assert oracle.describe(res.choice) == {"t1": "gpu0/1g.10gb@0"}
    np.testing.assert_array_equal(res.run.latencies, static.latencies)


class _InlinePool:
    def submit(self, fn, arg):  # type: ignore[no-untyped-def]
        from concurrent.futures import Future

        f: Future[HostRun] = Future()
        f.set_result(fn(arg))
        return f


def suite_by_name(name: str) -> Scenario:
    return next(s for s in suite() if s.name == name)


# -- a rerouted aggressor --------------------------------------------------------------------------
def test_reroute_moves_the_interference_between_switches() -> None:
    sc = _tiny().hosts[0]
    extra = """reroute_period_s = 600
reroute = [{ at_s = 300, flows = [{ path = ["nvme2", "cpu"] }, { path = ["cpu", "gpu2"] }] }]
"""
    text = TINY.rstrip() + "\n" + extra
    moved = parse_scenario(text, "/tmp/tiny.toml")
    assert sc.tenants["etl"].flows_at(0) == 0
    sim = HostSim(moved.hosts[0], moved.meta, 2, 0)
    before = sim.advance(5.0)
    sim.t = 300.0
    after = sim.advance(5.0)

    # Before: the ETL copies cross gpu1's link; after: gpu2's. The victim's share grows back
    # (the elastic-share memo must not keep the old paths).
    def rx(obs: Observation, gpu: str) -> float:
        return obs.gpus[gpu].pcie_rx_bps or 0.0

    assert rx(before, "gpu1") > 0 and rx(before, "gpu2") == 0
    assert rx(after, "gpu2") > 0 and rx(after, "gpu1") == 0
    shares = list(sim._elastic.values())
    assert len(shares) == 2 and shares[0][f"v>{DOWN}"] < shares[1][f"v>{DOWN}"]  # host-to-GPU: down
    with pytest.raises(ScenarioError, match=r"reroute\[0\].flows\[0\].path: unknown device 'nope'"):
        parse_scenario(text.replace('"nvme2", "cpu"', '"nope", "cpu"'), "/tmp/tiny.toml")


# -- the suite ------------------------------------------------------------------------------------
def test_suite_scenarios_are_documented_and_long_enough() -> None:
    names = [s.name for s in suite()]
    assert len(names) >= 8 and {"paper-p4d", "vllm-ttft"} <= set(names)
    assert "p4d-demo" in bundled() and "p4d-demo" not in names
    docs = (Path(__file__).parent.parent / "docs" / "scenarios.md").read_text(encoding="utf-8")
    for s in suite():
        assert s.meta.suite_duration_s is not None and s.meta.suite_duration_s >= 7200
        head = Path(s.file).read_text(encoding="utf-8").splitlines()[0]
        assert head.startswith("#"), f"{s.name}: the TOML opens with what it represents"
        assert f"`{s.name}`" in docs, f"{s.name} is not in docs/scenarios.md"


@pytest.mark.slow
def test_suite_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.json"
    assert main(["replay", "--suite", "--duration", "300", "--json", str(out), "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert set(doc) == {"suite", "wall_s", "executor"} and doc["executor"] == "local" and doc["wall_s"] > 0
    assert len(doc["suite"]) >= 8
    for name, obj in doc["suite"].items():
        assert obj["scenario"] == name and obj["duration_s"] == 300 and obj["latency_view"] == "histogram"
        assert list(obj["policies"]) == list(SUITE_POLICIES)
        for row in obj["policies"].values():
            assert {"p99_ms", "p999_ms", "bad_request_fraction", "throughput", "actions_per_hour"} <= set(row)
        assert obj["policies"]["oracle"]["actions_per_hour"] == 0
        assert obj["policies"]["oracle"]["placement"]
        full, orc = obj["policies"]["full"]["bad_request_fraction"], obj["policies"]["oracle"]["bad_request_fraction"]
        assert obj["regret_bad_pts"] == pytest.approx(100 * (full - orc), abs=1e-3)
        assert name in text
    assert not math.isnan(doc["wall_s"])
    # The low-rate tenant never fills a window: the window rate is null, the request share is not.
    low = doc["suite"]["low-rate"]["policies"]
    assert all(row["violation_rate"] is None and row["windows_counted"] == 0 for row in low.values())
    assert low["static"]["bad_request_fraction"] > 0
    # Three tenants on four GPUs: the greedy search; never two tenants on one instance.
    crowded = doc["suite"]["crowded"]["policies"]["oracle"]
    assert crowded["search"]["a100x4"]["method"] == "greedy"
    where = list(crowded["placement"]["a100x4"].values())
    assert len(where) == 3 and len(set(where)) == 3


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--policies", "static"], "--policies: not with --suite"),
        (["--plot", "x.png"], "--plot: not with --suite"),
        (["--exact-latency"], "--exact-latency: not with --suite"),
        (["--duration", "-5"], "--duration must be a positive number"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--json", "/nonexistent-dir/s.json"], "--json /nonexistent-dir/s.json"),
    ],
)
def test_suite_user_errors_exit_2_before_any_run(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--suite", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
