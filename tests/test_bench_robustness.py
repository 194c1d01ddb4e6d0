"""bench/robustness.py: perturbations are seeded, valid, and judged by the gate."""

from __future__ import annotations

import copy
import random
import tomllib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from bench.robustness import (
    case_generators,
    cured_share,
    lever_line,
    main,
    outage_had,
    outage_met,
    perturb,
    run_case,
    worse_kind,
)
from replay.request_traces import read_request_trace
from replay.runner import HostRun, run_host
from replay.scenario import SCENARIO_DIR, resolve_data, scenario_from_data, suite

NAMES = [s.name for s in suite()]


def _pair(data: dict[str, Any], name: str, case: int, which: str) -> tuple[Any, Any, list[str], list[str]]:
    """One seeded case perturbed without and with the generator `which` (a keyword of perturb):
    (the plain copy, the other, their notes)."""
    plain, other = copy.deepcopy(data), copy.deepcopy(data)
    notes = perturb(plain, random.Random(f"7:{name}:{case}"))
    extra: dict[str, Any] = case_generators(7, name, case, [which])  # (perturb's trace_dir is no generator)
    return plain, other, notes, perturb(other, random.Random(f"7:{name}:{case}"), **extra)


@pytest.mark.parametrize("name", NAMES)
def test_every_perturbation_is_a_valid_scenario_and_seeded(name: str) -> None:
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    for case in range(5):
        a, b = copy.deepcopy(data), copy.deepcopy(data)
        notes = perturb(a, random.Random(f"7:{name}:{case}"))
        assert perturb(b, random.Random(f"7:{name}:{case}")) == notes and a == b  # same seed, same case
        assert a != data and notes[0].startswith("seed +")
        sc = scenario_from_data(a, str(SCENARIO_DIR / f"{name}.toml"))  # raises on an invalid one
        assert sc.meta.seed != data["scenario"].get("seed", 1)
        for host in a["hosts"]:
            for t in host["tenants"]:
                sched = t.get("schedule") or {}
                for lo, hi in sched.get("on", []):
                    assert 0 <= lo < hi <= sched["period_s"] + 1e-9  # shifted inside the period


def test_a_case_runs_both_policies_and_is_judged() -> None:
    r = run_case(("paper-p4d", 0, 7, 600.0, {"cost_margin": 1.0}))
    assert r["duration_s"] == 600.0 and r["perturbation"]
    assert set(r["static"]) == {"p99_ms", "bad"} and r["full"]["p99_ms"] > 0
    assert isinstance(r["problems"], list)


def test_a_case_records_what_full_bought_and_its_price() -> None:
    """A worse case is read from its levers: each move or resize with the price it was bought at."""
    # (over 900 s the same case resized at 15 s, before its bursts were seen, and its p99 went
    # from 33 ms to 1.4 s: docs/results.md, "Bursts an outage meets")
    r = run_case(("bursty-code", 3, 7, 1800.0, {}))
    assert r["levers"], "bursty-code case 3 resizes its victim in its second minute"
    c = r["levers"][0]
    assert c["lever"] == "resize" and 60 < c["t"] < 1800
    assert c["benefit_requests"] >= c["cost_requests"] > 0  # bought: it paid (cost_margin 1)
    line = lever_line(c, r["duration_s"])
    assert line.startswith(f"t={c['t']:.0f} s (") and f"cost {c['cost_requests']:.0f} requests" in line
    assert c["met_share"] == pytest.approx(c["met_rps"] * c["outage_s"] / (c["run_rps"] * r["duration_s"]), rel=0.01)
    assert f"its outage met {c['met_rps']:.2f} req/s" in line
    relief = {"t": 90.0, "tenant": "v", "lever": "place"}  # a relief move carries no price
    assert lever_line(relief, 900.0) == "t=90 s (0.10 of the run) v place: not priced"
    dear = run_case(("bursty-code", 3, 7, 900.0, {"cost_margin": 1000.0}))
    assert dear["levers"] == []  # nothing pays at that margin: nothing bought, nothing recorded


def test_tick_s_sets_the_controllers_sample_period(capsys: pytest.CaptureFixture[str]) -> None:
    """--tick-s: every case runs at that tick (the daemon samples every 2 s; the scenarios, 5 s)."""
    from replay import runner

    seen: list[float] = []
    real = runner.HostSim

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, model, meta, *a, **kw):  # type: ignore[no-untyped-def]
            seen.append(meta.tick_s)
            super().__init__(model, meta, *a, **kw)

    runner.HostSim = Spy  # type: ignore[misc]
    try:
        r = run_case(("low-rate", 0, 7, 60.0, {}), tick_s=2.0)
    finally:
        runner.HostSim = real  # type: ignore[misc]
    assert seen and set(seen) == {2.0} and r["duration_s"] == 60.0
    with pytest.raises(SystemExit):
        main(["--tick-s", "0"])
    assert "--tick-s: between 0.1 and 60 s" in capsys.readouterr().err


def test_a_policy_value_must_be_toml(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--policy", "cost_margin=abc"])
    assert "must be a TOML value" in capsys.readouterr().err


def test_bursts_draw_from_their_own_generator() -> None:
    """--bursts turns some Poisson arrivals into MMPP bursts and leaves every other draw as it was."""
    data = tomllib.loads((SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8"))
    turned = 0
    for case in range(12):
        _, bursty, a, b = _pair(data, "paper-p4d", case, "bursts")
        assert [n for n in b if "bursts" not in n] == a
        req = bursty["hosts"][0]["tenants"][0]["requests"]
        if req.get("arrivals") == "mmpp":
            turned += 1
            assert 2.0 <= req["burst_ratio"] <= 5.0
            scenario_from_data(bursty, str(SCENARIO_DIR / "paper-p4d.toml"))
    assert 0 < turned < 12


def test_protect_marks_aggressors_with_a_generator_of_its_own() -> None:
    """--protect: bulk and compute tenants may become protected (never capped, never moved), and
    every other draw is the one a run without it makes: the same cases, one change."""
    data = tomllib.loads((SCENARIO_DIR / "vllm-ttft.toml").read_text(encoding="utf-8"))
    marked = 0
    for case in range(8):
        plain, prot, notes, pnotes = _pair(data, "vllm-ttft", case, "protect")
        assert [n for n in pnotes if not n.endswith(" protected")] == notes
        for a, b in zip(plain["hosts"][0]["tenants"], prot["hosts"][0]["tenants"], strict=True):
            if b["role"] == "protected":
                marked += 1
                assert a["role"] in ("bulk", "compute") and f"{a['name']} protected" in pnotes
            assert {**b, "role": a["role"]} == a
        scenario_from_data(prot, str(SCENARIO_DIR / "vllm-ttft.toml"))  # a valid scenario
    assert marked > 0


def test_quantiles_move_slos_with_a_generator_of_their_own() -> None:
    """--quantiles: a sensitive tenant's SLO may be on the p95 or the p999 instead of the p99 (the
    same latency), and every other draw is the one a run without it makes."""
    data = tomllib.loads((SCENARIO_DIR / "vllm-ttft.toml").read_text(encoding="utf-8"))
    seen = set()
    for case in range(12):
        plain, moved, notes, qnotes = _pair(data, "vllm-ttft", case, "quantiles")
        assert [n for n in qnotes if ".quantile " not in n] == notes
        for a, b in zip(plain["hosts"][0]["tenants"], moved["hosts"][0]["tenants"], strict=True):
            q = b.get("quantile", 0.99)
            seen.add(q)
            assert {**b, "quantile": a.get("quantile", 0.99)} == {**a, "quantile": a.get("quantile", 0.99)}
            assert q == a.get("quantile", 0.99) or f"{a['name']}.quantile {q:g}" in qnotes
        sc = scenario_from_data(moved, str(SCENARIO_DIR / "vllm-ttft.toml"))  # a valid scenario
        assert sc.hosts[0].spec.tenants["vllm"].quantile == moved["hosts"][0]["tenants"][0].get("quantile", 0.99)
    assert seen == {0.95, 0.99, 0.999}


@pytest.mark.parametrize("name", NAMES)
def test_shapes_vary_service_and_arrivals_with_a_generator_of_their_own(name: str) -> None:
    """--shapes: each sensitive tenant's service-time CV is drawn in [0.1, 1.0] and Poisson arrivals
    may become a Gamma renewal process (CV 0.5-3); every other draw is the one a run without it
    makes, and the scenario stays valid."""
    path = SCENARIO_DIR / f"{name}.toml"
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    gamma = 0
    for case in range(6):
        plain, shaped, notes, snotes = _pair(data, name, case, "shapes")
        assert [n for n in snotes if ".noise_cv " not in n and " gamma cv " not in n] == notes
        for host_a, host_b in zip(plain["hosts"], shaped["hosts"], strict=True):
            for a, b in zip(host_a["tenants"], host_b["tenants"], strict=True):
                if a.get("role") != "sensitive":
                    assert a == b
                    continue
                ra, rb = a["requests"], b["requests"]
                assert 0.1 <= rb["noise_cv"] <= 1.0
                if rb.get("arrivals") == "gamma" and ra.get("arrivals", "poisson") == "poisson":
                    gamma += 1
                    assert 0.5 <= rb["cv"] <= 3.0 and "trace" not in rb
                assert {k: v for k, v in rb.items() if k not in ("noise_cv", "arrivals", "cv")} == {
                    k: v for k, v in ra.items() if k not in ("noise_cv", "arrivals", "cv")
                }
        sc = scenario_from_data(shaped, str(path))  # raises on an invalid one
        assert sc.hosts
    has_poisson = any(
        t.get("role") == "sensitive" and "rate" in t.get("requests", {})
        and t["requests"].get("arrivals", "poisson") == "poisson"
        for h in data["hosts"] for t in h["tenants"]
    )  # fmt: skip
    assert gamma > 0 or not has_poisson


def test_low_quantiles_put_slos_on_the_median_or_p90_below_the_latency() -> None:
    """--low-quantiles: a sensitive tenant's SLO on the p50 or the p90 at 0.25-0.5 of its latency,
    from a generator of its own; every other draw is the one a run without it makes."""
    data = tomllib.loads((SCENARIO_DIR / "vllm-ttft.toml").read_text(encoding="utf-8"))
    seen = set()
    for case in range(10):
        plain, low, notes, lnotes = _pair(data, "vllm-ttft", case, "low_quantiles")
        extra = Counter(lnotes) - Counter(notes)
        assert not Counter(notes) - Counter(lnotes) and sorted(extra) == sorted(
            [n for n in extra if n.startswith("vllm.quantile ")] + [n for n in extra if n.startswith("vllm.slo_ms x")]
        ), lnotes
        assert sum(extra.values()) == 2
        a, b = plain["hosts"][0]["tenants"][0], low["hosts"][0]["tenants"][0]
        assert b["quantile"] in (0.5, 0.9)
        seen.add(b["quantile"])
        assert 0.25 * a["slo_ms"] - 1e-9 <= b["slo_ms"] <= 0.5 * a["slo_ms"] + 1e-9
        assert {**b, "quantile": 0, "slo_ms": 0} == {**a, "quantile": 0, "slo_ms": 0}
        scenario_from_data(low, str(SCENARIO_DIR / "vllm-ttft.toml"))  # a valid scenario
    assert seen == {0.5, 0.9}


def test_tight_slos_scale_every_sensitive_slo_down_and_nothing_else() -> None:
    """--tight-slos: a sensitive tenant's SLO at 0.2-0.8 of what the rest of the perturbation gave it,
    from a generator of its own (every other draw the one a run without it makes), its quantile kept."""
    data = tomllib.loads((SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8"))
    ks, said = [], 0
    for case in range(20):
        plain, tight, notes, tnotes = _pair(data, "paper-p4d", case, "tight_slos")
        extra = Counter(tnotes) - Counter(notes)
        assert not Counter(notes) - Counter(tnotes)
        assert all(n.endswith("(tight)") and ".slo_ms x" in n for n in extra)
        said += sum(extra.values())
        for hp, ht in zip(plain["hosts"], tight["hosts"], strict=True):
            for a, b in zip(hp["tenants"], ht["tenants"], strict=True):
                if a.get("role") == "sensitive":
                    k = b["slo_ms"] / a["slo_ms"]
                    assert 0.2 - 1e-9 <= k <= 0.8 + 1e-9
                    ks.append(k)
                    assert b.get("quantile") == a.get("quantile")
                    b = {**b, "slo_ms": a["slo_ms"]}
                assert a == b
        scenario_from_data(tight, str(SCENARIO_DIR / "paper-p4d.toml"))  # a valid scenario
    assert len(ks) == said  # one note each
    assert min(ks) < 0.35 and max(ks) > 0.65  # the range is drawn over, log-uniform


@pytest.mark.parametrize("name", ["vllm-ttft", "low-rate", "paper-p4d", "bursty-code"])
def test_low_rates_put_every_sensitive_tenant_at_a_tenth_to_two_requests_a_second(name: str) -> None:
    """--low-rates: each sensitive tenant's mean rate drawn in 0.1-2 requests a second, from a
    generator of its own (every other draw the one a run without it makes), through the trace's
    speed for a trace-driven tenant (vllm-ttft; low-rate's, whose schedule keeps 12% of the trace,
    over that), the rate for a synthetic one (85 and 60 a second in the others): measured from the
    arrivals of an hour's static run."""
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    rates = []
    for case in range(3):
        _, low, notes, lnotes = _pair(data, name, case, "low_rates")
        extra = Counter(lnotes) - Counter(notes)
        assert not Counter(notes) - Counter(lnotes) and all("(low rates)" in n for n in extra), lnotes
        sc = scenario_from_data(low, str(SCENARIO_DIR / f"{name}.toml"))
        sensitive = {t["name"] for h in low["hosts"] for t in h["tenants"] if t.get("role") == "sensitive"}
        assert sum(extra.values()) == len(sensitive)
        run = run_host(sc, 0, "static", 3600.0, sc.meta.seed)
        for tenant in sensitive & set(run.arrivals):
            rates.append(run.arrivals[tenant] / 3600.0)
    assert rates and all(0.05 <= r <= 2.6 for r in rates), rates  # a trace's rate varies over its cycle
    assert max(rates) / min(rates) > 1.5  # drawn, not one fixed rate


def test_signals_degrade_the_hosts_signals_from_a_generator_of_their_own() -> None:
    """--signals: [scenario.signals] drawn per case (no DCGM with odds one half, PCIe noise CV 0-1,
    0-10% of latency scrapes failing), every other draw the plain run's; a valid scenario."""
    data = tomllib.loads((SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8"))
    dcgm = set()
    for case in range(10):
        plain, sig, notes, snotes = _pair(data, "paper-p4d", case, "signals")
        extra = Counter(snotes) - Counter(notes)
        assert not Counter(notes) - Counter(snotes) and len(extra) == 1 and next(iter(extra)).startswith("signals: ")
        got = sig["scenario"].pop("signals")
        assert plain == sig  # nothing else changed
        assert 0 <= got["pcie_noise_cv"] <= 1 and 0 <= got["latency_dropout"] <= 0.1
        dcgm.add(got["dcgm"])
        sig["scenario"]["signals"] = got
        assert scenario_from_data(sig, "paper-p4d").meta.signals.degraded
    assert dcgm == {True, False}


def test_actuation_draws_the_hosts_actuators_from_a_generator_of_its_own() -> None:
    """--actuation: [scenario.actuation] drawn per case (relaunch and reconfiguration 0.5-2x the
    configured, a CV of 0-0.5, up to 20% of moves failing and of reconfigurations refused), every
    other draw the plain run's; a valid scenario whose actuators differ from the configured ones."""
    data = tomllib.loads((SCENARIO_DIR / "vllm-ttft.toml").read_text(encoding="utf-8"))
    factors = []
    for case in range(10):
        plain, act, notes, anotes = _pair(data, "vllm-ttft", case, "actuation")
        extra = Counter(anotes) - Counter(notes)
        assert not Counter(notes) - Counter(anotes) and len(extra) == 1 and next(iter(extra)).startswith("actuation: ")
        got = act["scenario"].pop("actuation")
        assert plain == act  # nothing else changed
        assert 0.5 <= got["relaunch_factor"] <= 2 and 0.5 <= got["reconfig_factor"] <= 2
        assert 0 <= got["outage_cv"] <= 0.5
        assert 0 <= got["move_failures"] <= 0.2 and 0 <= got["reconfig_refusals"] <= 0.2
        assert got["readiness_timeout_s"] == 120.0  # the launcher's default wait
        assert 0 <= got["failed_exits"] <= 1
        factors.append(got["relaunch_factor"])
        act["scenario"]["actuation"] = got
        assert scenario_from_data(act, "vllm-ttft").meta.actuation.degraded
    assert min(factors) < 1 < max(factors)


@pytest.mark.parametrize("name", ["paper-p4d", "diurnal"])
def test_duty_puts_aggressors_on_a_cycle_with_a_generator_of_its_own(name: str) -> None:
    """--duty: each bulk or compute tenant runs on a cycle of 2-60 minutes, on for 10-90% of it (one
    window inside the period), at its level; a diurnal profile is left alone; nothing else changes."""
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    cycled = 0
    for case in range(6):
        plain, duty, notes, dnotes = _pair(data, name, case, "duty")
        assert not Counter(notes) - Counter(dnotes)
        scenario_from_data(copy.deepcopy(duty), name)  # a valid scenario
        for a, b in zip(plain["hosts"][0]["tenants"], duty["hosts"][0]["tenants"], strict=True):
            sa, sb = a.pop("schedule", {}), b.pop("schedule", {})
            assert a == b  # only the schedule changes
            if sa.get("profile") or b.get("role") not in ("bulk", "compute"):
                assert sa == sb
                continue
            ((on, off),) = sb["on"]
            assert 120 <= sb["period_s"] <= 3600 and 0 <= on < off <= sb["period_s"]
            assert 0.1 <= (off - on) / sb["period_s"] <= 0.9 and sb.get("level", 1.0) == sa.get("level", 1.0)
            cycled += 1
    assert cycled or name == "diurnal"


def test_traces_reshape_a_trace_keeping_its_requests_and_rate(tmp_path: Path) -> None:
    """--traces: the trace-driven tenant gets the bundled trace's requests (the same prompt and
    output lengths, the same count over the same cycle, so the same mean rate) in another shape:
    started elsewhere and warped, so its per-minute counts spread far more than the original's
    (0.25 CV). Seeded like every other generator; a tenant without a trace is left alone."""
    name = "vllm-ttft"
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    (orig,) = [t["requests"]["trace"] for h in data["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    t0, tok0, gen0 = read_request_trace(str(resolve_data(orig, SCENARIO_DIR)))
    spreads = []
    for case, out in ((0, tmp_path / "a"), (0, tmp_path / "b"), (1, tmp_path / "c")):
        out.mkdir()
        m = copy.deepcopy(data)
        notes = perturb(
            m, random.Random(f"7:{name}:{case}"), **case_generators(7, name, case, ["traces"]), trace_dir=out
        )
        (path,) = [t["requests"]["trace"] for h in m["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
        assert Path(path).parent == out and any("warped" in n for n in notes)
        scenario_from_data(m, str(SCENARIO_DIR / f"{name}.toml"))  # valid, the new trace read
        t, tok, gen = read_request_trace(path)
        assert t.size == t0.size and sorted(tok) == sorted(tok0) and sorted(gen) == sorted(gen0)
        assert abs(t[-1] - t0[-1]) < 0.01 * t0[-1]  # the same cycle: the same mean rate
        counts = np.histogram(t, bins=np.arange(0.0, t0[-1], 60.0))[0]
        spreads.append((counts.std() / counts.mean(), path))
    assert Path(spreads[0][1]).read_bytes() == Path(spreads[1][1]).read_bytes()  # same case, same trace
    assert Path(spreads[0][1]).read_bytes() != Path(spreads[2][1]).read_bytes()
    assert all(cv > 0.3 for cv, _ in spreads), [cv for cv, _ in spreads]  # the original: 0.25
    with pytest.raises(ValueError, match="trace_dir"):
        perturb(copy.deepcopy(data), random.Random("7"), traces=random.Random("7"))
    p4d = tomllib.loads((SCENARIO_DIR / "paper-p4d.toml").read_text(encoding="utf-8"))
    plain, other, notes, other_notes = _pair(p4d, "paper-p4d", 0, "traces")
    assert plain == other and notes == other_notes  # no trace: nothing to reshape, no draw changed


def test_trace_replaces_the_trace_as_busy_as_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--trace PATH: a real trace the controller was not tuned on drives every trace-driven tenant,
    sped so that its busy seconds' prompt tokens per second are the bundled trace's (the load the
    tenant's server was sized for); no other draw changes, and a trace that cannot be read is a
    usage error naming it."""
    name = "vllm-ttft"
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    (orig,) = [t["requests"] for h in data["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    t0, tok0, _ = read_request_trace(str(resolve_data(orig["trace"], SCENARIO_DIR)))
    other = tmp_path / "other.csv"  # BurstGPT's columns: 1 request a second of 4,000 prompt tokens
    rows = [f"{i:.1f},m,4000,10,4010,Conversation log" for i in range(601)]
    other.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "\n".join(rows) + "\n")
    plain, m = copy.deepcopy(data), copy.deepcopy(data)
    notes = perturb(plain, random.Random(f"7:{name}:0"))
    notes_t = perturb(m, random.Random(f"7:{name}:0"), trace=other)
    (req,) = [t["requests"] for h in m["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    (req0,) = [t["requests"] for h in plain["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    assert req["trace"] == str(other)
    # the bundled trace's busy seconds: the 99th percentile of its prompt tokens per 10 s bin
    own = float(np.percentile(np.bincount((t0 // 10.0).astype(int), weights=tok0), 99)) / 10.0
    assert req["trace_speed"] / req0["trace_speed"] == pytest.approx(own / 4000.0, rel=0.01)
    assert [n for n in notes_t if "other.csv" not in n] == notes and any("other.csv x" in n for n in notes_t)
    scenario_from_data(m, str(SCENARIO_DIR / f"{name}.toml"))  # valid, the trace read
    with pytest.raises(SystemExit):
        main(["--trace", str(tmp_path / "missing.csv"), "--per", "0"])
    assert "--trace:" in capsys.readouterr().err


def test_fit_trace_fits_the_model_and_the_slo_to_the_traces_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fit-trace: a trace of ten times the bundled prompts (as long-context traces are) gets a
    max_model_len that refuses the share of its prompts the scenario's refuses of the bundled ones,
    and an SLO as many times the scenario's as its mean admitted prompt is; without the flag, the
    model and SLO stay; the flag needs --trace."""
    name = "vllm-ttft"
    data = tomllib.loads((SCENARIO_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    (ten,) = [t for h in data["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    t0, tok0, gen0 = read_request_trace(str(resolve_data(ten["requests"]["trace"], SCENARIO_DIR)))
    longer = tmp_path / "long.jsonl"
    longer.write_text(
        "".join(
            f'{{"timestamp": {1000 * a:.3f}, "input_length": {10 * k:.0f}, "output_length": {g:.0f}}}\n'
            for a, k, g in zip(t0.tolist(), tok0.tolist(), gen0.tolist(), strict=True)
        )
    )
    plain, fitted = copy.deepcopy(data), copy.deepcopy(data)
    perturb(plain, random.Random(f"7:{name}:0"), trace=longer)
    notes = perturb(fitted, random.Random(f"7:{name}:0"), trace=longer, fit_trace=True)
    (p,) = [t for h in plain["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    (f,) = [t for h in fitted["hosts"] for t in h["tenants"] if "trace" in t.get("requests", {})]
    limit = ten["requests"]["max_model_len"]
    assert p["requests"]["max_model_len"] == limit and p["slo_ms"] < 2 * ten["slo_ms"]
    refused = float(np.mean(tok0 >= limit))
    new_limit = f["requests"]["max_model_len"]
    assert float(np.mean(10 * tok0 >= new_limit)) == pytest.approx(refused, abs=0.001)
    assert f["slo_ms"] / p["slo_ms"] == pytest.approx(
        float(np.mean((10 * tok0)[10 * tok0 < new_limit])) / float(np.mean(tok0[tok0 < limit])), rel=1e-6
    )
    assert any("max_model_len" in n for n in notes) and any("its mean prompt" in n for n in notes)
    scenario_from_data(fitted, str(SCENARIO_DIR / f"{name}.toml"))  # valid
    with pytest.raises(SystemExit):
        main(["--fit-trace", "--per", "0"])
    assert "--fit-trace: needs --trace" in capsys.readouterr().err


def test_alone_runs_the_sensitive_tenants_without_their_neighbours() -> None:
    """--alone: a third run, static with only the sensitive tenants, whose share over the SLO is
    their own; the cured share is what full took of what the neighbours added over it."""
    r = run_case(("bursty-code", 0, 7, 1800.0, {}), alone=True)
    a = r["alone"]
    added = r["static"]["bad"] - a["bad"]
    assert a["bad"] > 0.0 and added > 0.1  # its own bursts' tail, and the neighbours' (25 points here)
    assert cured_share(r) == pytest.approx((r["static"]["bad"] - r["full"]["bad"]) / added)
    assert cured_share({**r, "alone": {"bad": r["static"]["bad"] - 0.01, "p99_ms": 0.0}}) is None  # under 2 points
    assert cured_share({k: v for k, v in r.items() if k != "alone"}) is None
    assert "alone" not in run_case(("h200-gen5", 0, 7, 600.0, {}))


def test_what_an_outage_met_is_read_off_the_static_run() -> None:
    """The requests of the outage's seconds after the decision (static's windows: the same
    arrivals, not held), as a rate and as a share of the tenant's requests over the run."""
    windows = [(float(t), "v", 10 if 100 < t <= 160 else 2, 0.1) for t in range(5, 3605, 5)]
    windows += [(float(t), "other", 99, 0.1) for t in range(5, 3605, 5)]  # another tenant's: not counted
    static = cast(HostRun, SimpleNamespace(windows=windows, arrivals={"v": 2000}, duration_s=3600.0))
    met = outage_met(static, {"t": 100.0, "tenant": "v", "lever": "resize", "outage_s": 60.0})
    assert met == {"met_rps": 2.0, "met_share": 0.06, "run_rps": 0.556}  # 12 ticks of 10 in (100, 160]
    line = lever_line({**_priced(), **met}, 3600.0)
    assert line.endswith("; its outage met 2.00 req/s, the run's mean 0.56: 6.00% of the run's requests")
    assert outage_met(static, {"t": 100.0, "tenant": "v", "lever": "place", "outage_s": 0.0}) == {}  # a warm hand-over
    assert outage_met(static, {"t": 100.0, "tenant": "w", "lever": "place", "outage_s": 5.0}) == {}  # no requests


def test_what_an_outage_took_on_the_host_is_read_off_the_full_run() -> None:
    """The lever's own operation (the tenant's first outage from the decision on): its seconds and
    whether it succeeded, which a host's actuators ([scenario.actuation]) make differ from the price."""
    levers = [{"t": 50.0, "tenant": "v"}, {"t": 100.0, "tenant": "v"}, {"t": 90.0, "tenant": "w"},
              {"t": 300.0, "tenant": "v"}, {"t": 400.0, "tenant": "v"}]  # fmt: skip
    full = cast(HostRun, SimpleNamespace(outages=[(50.0, "v", 60.0, True), (100.0, "w", 9.0, True),
                                                  (100.0, "v", 95.7, False), (400.0, "v", 5.0, True)],
                                         lever_costs=levers))  # fmt: skip
    had = outage_had(full, {"t": 100.0, "tenant": "v"})
    assert had == {"had_s": 95.7, "had_ok": False}
    assert outage_had(full, {"t": 300.0, "tenant": "v"}) == {}  # refused: the 400 s outage is the next lever's
    line = lever_line({**_priced(), **had}, 3600.0)
    assert line.endswith("; it took 95.7 s, and failed")
    r = run_case(("h200-gen5", 2, 401, 14400.0, {}), which=("actuation",))
    (c,) = r["levers"]  # the case's one resize, priced at 60 s, took longer on this host
    assert c["outage_s"] == 60.0 and c["had_ok"] and c["had_s"] > 80.0


def _priced() -> dict[str, Any]:
    return {
        "t": 100.0, "tenant": "v", "lever": "resize", "outage_s": 60.0, "cost_requests": 130.0,
        "benefit_requests": 70.0, "rent_requests": 20.0, "rate_rps": 1.0, "bad_share": 0.1,
        "episode_elapsed_s": 90.0, "expected_episode_s": 300.0,
    }  # fmt: skip


def test_a_worse_cases_first_suspect_is_named_from_what_its_levers_had():
    def case(*levers: dict, restarts: tuple = ()) -> dict:
        return {"levers": list(levers), "own_restarts": list(restarts)}

    resize = {"t": 900.0, "lever": "resize", "outage_s": 60.0}
    assert worse_kind(case({**resize, "had_s": 140.0, "had_ok": False})) == "failed"
    assert worse_kind(case({**resize, "had_s": 46.0, "had_ok": False})) == "other"  # it failed fast
    assert worse_kind(case({**resize, "had_s": 115.0, "had_ok": True})) == "slow"
    # a relief move is unpriced (no outage_s): a failure of it is one; its success is no slow one
    relief = {"t": 3710.0, "lever": "place"}
    assert worse_kind(case({**relief, "had_s": 124.1, "had_ok": False})) == "failed"
    assert worse_kind(case({**relief, "had_s": 6.9, "had_ok": True})) == "other"
    assert worse_kind(case({**resize, "had_s": 60.0, "had_ok": True}, restarts=((4871.0, "vllm", 60.0),))) == (
        "own restarts"
    )
    assert worse_kind(case({**resize, "had_s": 60.0, "had_ok": True}, restarts=((100.0, "vllm", 60.0),))) == "other"
    assert worse_kind(case({**resize, "t": 75.0, "had_s": 60.0, "had_ok": True})) == "early"
    assert worse_kind(case()) == "no lever"
