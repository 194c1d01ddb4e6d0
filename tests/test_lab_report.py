"""Issue 9, reporting and observation: the shared histogram estimator (hand-computed cases), over_slo
from every latency source, its sanitising, the trace schema /2 with a /1 reader, the MQTT count
ingest, and the request-level report fields (per tenant, served not arrived, null window rate)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fakes.daemon_fakes import ToyHost
from fakes.fixture_paths import FIXTURES

from controller.daemon import Daemon, DaemonOptions
from controller.exporters.mqtt import MqttBridge, MqttOptions, PushedCounts, parse_pushed
from controller.signals.latency import JsonlLatencySampler, LatencyReading, PrometheusLatencySampler
from fsm.decide import Decision, decide
from fsm.histogram import VLLM_TTFT_BUCKETS, histogram_quantile, over_threshold, window_from_buckets
from fsm.observation import LatencyWindow, Observation, TenantSample
from fsm.sanitize import sanitize
from fsm.spec import HostSpec
from fsm.state import ControllerState
from replay import report
from replay.runner import HostRun, run_host
from replay.scenario import SCENARIO_DIR, load_scenario, parse_scenario
from replay.simulator import HostSim
from replay.trace import SCHEMA, TraceWriter, read_trace

INF = math.inf
DATA = Path(__file__).parent / "data"
V1_TRACE = DATA / "trace-v1_example-spec_5-ticks.jsonl"

# 10 requests <= 0.1 s, 20 more <= 0.2 s, 10 more <= 0.4 s, none above: 40 in all.
B = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (INF, 40.0)]


# -- the estimator ------------------------------------------------------------------------------
def test_over_threshold_on_a_bucket_boundary_is_exact() -> None:
    assert over_threshold(0.2, B) == 10.0  # 40 - 30
    assert over_threshold(0.1, B) == 30.0
    assert over_threshold(0.4, B) == 0.0


def test_over_threshold_inside_a_bucket_interpolates_linearly() -> None:
    # 0.15 is half-way through (0.1, 0.2], which holds 20: 10 + 10 below, 20 over.
    assert over_threshold(0.15, B) == pytest.approx(20.0)
    # 0.25 is a quarter into (0.2, 0.4] (10 requests): 30 + 2.5 below -> 7.5 over, fractional.
    assert over_threshold(0.25, B) == pytest.approx(7.5)
    # the lowest bucket starts at 0: 0.05 is half of (0, 0.1] -> 5 below, 35 over.
    assert over_threshold(0.05, B) == pytest.approx(35.0)


def test_over_threshold_beyond_the_finite_buckets_and_bad_input() -> None:
    tail = [(0.1, 10.0), (0.2, 30.0), (INF, 35.0)]
    assert over_threshold(5.0, tail) == 5.0  # the +Inf bucket's 5 count as over (nothing to interpolate)
    assert over_threshold(0.2, [(0.1, 10.0), (0.2, 8.0), (INF, 12.0)]) == pytest.approx(2.0)  # made monotonic
    assert over_threshold(0.1, [(0.1, 1.0), (0.2, 2.0)]) is None  # no +Inf bucket: no result
    assert over_threshold(math.nan, B) is None


def test_over_threshold_agrees_with_the_quantile_interpolation() -> None:
    # The same linear model both ways: over(q-quantile) == (1 - q) x count.
    for q in (0.1, 0.5, 0.8, 0.99):
        x = histogram_quantile(q, B)
        assert x is not None and over_threshold(x, B) == pytest.approx((1 - q) * 40)


def test_window_from_buckets_counts_quantiles_and_over_slo() -> None:
    w = window_from_buckets(B, slo_s=0.15)
    assert w.count == 40 and w.over_slo == pytest.approx(20.0)
    assert w.p50 == pytest.approx(0.1 + 0.1 * (20 - 10) / 20)
    assert w.p99 == pytest.approx(0.2 + 0.2 * (39.6 - 30) / 10)
    assert window_from_buckets(B).over_slo is None  # no SLO: unknown
    assert window_from_buckets([(0.1, 0.0), (INF, 0.0)], 0.1) == LatencyWindow(0, over_slo=0.0)
    assert window_from_buckets([(INF, 7.0)], 0.1) == LatencyWindow(7)  # a lone +Inf bucket: a count only


def test_vllm_buckets_are_the_ones_in_vllms_source() -> None:
    # The capture of a vLLM /metrics page (tests/fixtures) carries the same lowest bounds.
    text = (FIXTURES / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom").read_text()
    les = [float(x) for x in re.findall(r'time_to_first_token_seconds_bucket\{le="([^"]+)"', text)]
    assert list(VLLM_TTFT_BUCKETS[: len(les)]) == les
    assert VLLM_TTFT_BUCKETS[-1] == 2560.0 and len(VLLM_TTFT_BUCKETS) == 22


# -- the simulator's window ----------------------------------------------------------------------
def test_simulated_window_goes_through_the_estimator_unless_exact() -> None:
    scen = load_scenario("paper-p4d")
    rep = np.sort(np.array([0.003, 0.004, 0.008, 0.012, 0.014, 0.016, 0.018, 0.03]))
    hist = HostSim(scen.hosts[0], scen.meta, 1)
    w, q = hist._window(rep, 0.015, 0.99)
    # by hand, vLLM's buckets: <=0.005: 2, <=0.01: 3, <=0.02: 7, <=0.04: 8
    buckets = [(b, float(np.sum(rep <= b))) for b in VLLM_TTFT_BUCKETS] + [(INF, 8.0)]
    assert w == window_from_buckets(buckets, 0.015)
    assert w.over_slo == pytest.approx(8 - (3 + 4 * 0.5))  # 15 ms is half-way through (10, 20] ms
    assert q == histogram_quantile(0.99, buckets)
    exact = HostSim(scen.hosts[0], scen.meta, 1, exact_latency=True)
    we, qe = exact._window(rep, 0.015, 0.99)
    assert we.over_slo == 3.0 and qe == pytest.approx(float(np.quantile(rep, 0.99)))
    assert we.p99 == pytest.approx(float(np.quantile(rep, 0.99)))
    empty, qn = hist._window(np.empty(0), 0.015, 0.99)
    assert empty.count == 0 and math.isnan(qn)


# -- live sources ----------------------------------------------------------------------------------
def _bump(text: str, extra: dict[float, int]) -> str:
    """The capture with extra observations: `extra[le]` more in the bucket ending at le."""

    def sub(m: re.Match[str]) -> str:
        add = sum(n for b, n in extra.items() if b <= float(m.group(2)))
        return f"{m.group(1)}{float(m.group(3)) + add:.1f}"

    out = re.sub(r'(_bucket\{le="([^"]+)"[^}]*\} )([0-9.]+)', sub, text)
    total = sum(extra.values())
    return re.sub(r"(_count\{[^}]*\} )([0-9.]+)", lambda m: f"{m.group(1)}{float(m.group(2)) + total:.1f}", out)


def test_prometheus_sampler_interpolates_over_slo_at_the_tenants_slo() -> None:
    text = (FIXTURES / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom").read_text()
    # between the scrapes: 10 requests in (0.01, 0.02] s and 10 in (0.04, 0.06] s
    pages = iter([text, _bump(text, {0.02: 10, 0.06: 10})])

    async def fetch(url: str, timeout: float) -> str:
        return next(pages)

    labels = {"model_name": "meta-llama/Llama-3.1-8B-Instruct"}
    s = PrometheusLatencySampler("x", "http://unused", labels=labels, fetch=fetch, slo_s=0.05)

    async def run() -> LatencyReading:
        await s.sample(1.0)
        r = await s.sample(2.0)
        assert isinstance(r, LatencyReading)
        return r

    w = asyncio.run(run()).window
    # 0.05 is half-way through (0.04, 0.06]: 10 + 5 at or below it, 5 over
    assert w.count == 20 and w.over_slo == pytest.approx(5.0)
    s2 = PrometheusLatencySampler("x", "http://unused", labels=labels, fetch=fetch)  # no SLO given: unknown
    pages = iter([text, _bump(text, {0.02: 3})])
    assert asyncio.run(_two(s2)).window.over_slo is None


async def _two(s: PrometheusLatencySampler) -> LatencyReading:
    await s.sample(1.0)
    r = await s.sample(2.0)
    assert isinstance(r, LatencyReading)
    return r


def test_jsonl_sampler_counts_over_slo_exactly(tmp_path: Path) -> None:
    p = tmp_path / "lat.jsonl"
    p.write_text("")
    s = JsonlLatencySampler("x", str(p), slo_s=0.2)

    async def run() -> LatencyReading:
        await s.sample(1.0)
        with open(p, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps({"latency_s": v}) + "\n" for v in (0.1, 0.2, 0.25, 0.9)))
        r = await s.sample(2.0)
        assert isinstance(r, LatencyReading)
        return r

    w = asyncio.run(run()).window
    assert w.count == 4 and w.over_slo == 2.0  # 0.2 is not over a 0.2 s SLO


# -- sanitize ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("over", "reason"),
    [(-1.0, "negative"), (math.nan, "NaN"), (math.inf, "infinite"), (11.0, "above count")],
)
def test_sanitize_drops_a_bad_over_slo_and_counts_it(over: float, reason: str) -> None:
    obs = Observation(t=1.0, tenants={"llm": TenantSample(latency=LatencyWindow(10, p99=0.1, over_slo=over))})
    clean, reasons = sanitize(obs)
    lat = clean.tenants["llm"].latency
    assert lat is not None and lat.over_slo is None and lat.count == 10 and lat.p99 == 0.1
    assert reasons == {f"tenant.llm.latency.over_slo: {reason}": 1}
    ok = Observation(t=1.0, tenants={"llm": TenantSample(latency=LatencyWindow(10, over_slo=2.5))})
    assert sanitize(ok)[0] is ok


@pytest.mark.parametrize("bucket", [(0.25, 0.1), (0.1, math.inf), (-0.1, math.nan)])
def test_sanitize_drops_a_bad_slo_bucket_and_keeps_the_counts(bucket: tuple[float, float]) -> None:
    w = LatencyWindow(10, over_slo=2.0, over_slo_range=(1.0, 3.0), over_slo_bucket=bucket)
    clean, reasons = sanitize(Observation(t=1.0, tenants={"llm": TenantSample(latency=w)}))
    lat = clean.tenants["llm"].latency
    assert lat is not None and lat.over_slo_bucket is None and lat.over_slo_range == (1.0, 3.0)
    assert reasons == {"tenant.llm.latency.over_slo_bucket: not (0 <= lower < upper, finite)": 1}


# -- traces ------------------------------------------------------------------------------------------
def test_a_v1_trace_still_reads(tmp_path: Path) -> None:
    header, obs = read_trace(V1_TRACE)
    assert header.schema == "tailguard.trace/1" and header.host == "toy"
    # that spec's outage fields (move_outage_s 5, reconfig_outage_s 18) under today's names
    db = header.spec.tenants["db"]
    assert (db.relaunch_s, db.reconfig_s) == (5.0, 18.0)
    got = list(obs)
    assert len(got) == 5
    for o in got:
        lat = o.tenants["llm"].latency
        assert lat is not None and lat.count > 0 and lat.p99 is not None and lat.over_slo is None
    # A /1 line holding over_slo (main wrote null there before /2) is still read as unknown.
    text = V1_TRACE.read_text().replace('"p999":', '"over_slo":3.0,"p999":')
    other = tmp_path / "v1b.jsonl"
    other.write_text(text)
    assert all(o.tenants["llm"].latency.over_slo is None for o in read_trace(other)[1])  # type: ignore[union-attr]


def test_trace_v2_round_trips_over_slo_and_never_appends_under_a_v1_header(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    shutil.copy(V1_TRACE, path)
    header, _ = read_trace(V1_TRACE)
    obs = Observation(t=5.0, tenants={"llm": TenantSample(latency=LatencyWindow(20, p99=0.2, over_slo=1.5))})
    with TraceWriter(path, "toy", header.spec) as w:
        w.write(obs)
    h2, got = read_trace(path)
    assert h2.schema == SCHEMA == "tailguard.trace/2"
    (o,) = list(got)
    assert o.tenants["llm"].latency is not None and o.tenants["llm"].latency.over_slo == 1.5
    old, _ = read_trace(tmp_path / "t.jsonl.1")  # the /1 file was shifted aside, intact
    assert old.schema == "tailguard.trace/1"


# -- MQTT and the daemon ----------------------------------------------------------------------------------
def test_parse_pushed_counts_and_garbage() -> None:
    assert parse_pushed(b'{"count": 40, "over_slo": 1}') == PushedCounts(40, 1.0)
    assert parse_pushed(b'{"count": 0, "over_slo": 0, "t": 12.5}') == PushedCounts(0, 0.0)
    assert parse_pushed(b"[0.1, 0.2]") == [0.1, 0.2]
    for bad, msg in [
        (b'{"count": 10}', "missing over_slo"),
        (b'{"count": 10, "over_slo": 11}', "outside"),
        (b'{"count": 10, "over_slo": -1}', "outside"),
        (b'{"count": -3, "over_slo": 0}', "whole number"),
        (b'{"count": 2.5, "over_slo": 0}', "whole number"),
        (b'{"count": true, "over_slo": 0}', "whole number"),
        (b'{"count": 10, "over_slo": "x"}', "finite number"),
        (b'{"count": 10, "over_slo": NaN}', "finite number"),
        (b'{"count": 10, "over_slo": 1, "p99": 2}', "unknown keys"),
        (b'{"count": 10, "over_slo": 1, "latency_s": [1]}', "unknown keys"),
        (b'{"count": 100000000, "over_slo": 1}', "whole number"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_pushed(bad)


def test_bridge_ingest_counts_reasons_and_the_daemon_window() -> None:
    seen: list[Observation] = []

    def spy(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        seen.append(obs)
        return decide(state, obs, spec)

    d = Daemon(ToyHost(), DaemonOptions(period_s=0.01, max_ticks=2), decide_fn=spy)
    bridge = MqttBridge(MqttOptions(), on_latency=d.push_latency, on_counts=d.push_counts)
    slo = d.spec.tenants["llm"].slo_s
    assert slo is not None
    bridge._ingest("llm", json.dumps({"count": 50, "over_slo": 2}).encode())
    bridge._ingest("llm", json.dumps([slo * 0.5, slo * 2, slo * 3]).encode())
    bridge._ingest("llm", b'{"count": 5, "over_slo": 9}')  # garbage: over_slo above count
    bridge._ingest("llm", b"\xff")
    bridge._ingest("ghost", b'{"count": 5, "over_slo": 0}')
    assert bridge.stats.malformed_total == {"latency_payload": 2, "unknown_tenant": 1}
    assert bridge.stats.ingested_counts_total == 50 and bridge.stats.ingested_samples_total == 3
    asyncio.run(d.run())
    lat = seen[0].tenants["llm"].latency
    assert lat is not None and lat.count == 53 and lat.over_slo == 4.0 and len(lat.samples) == 3
    nxt = seen[1].tenants["llm"].latency  # consumed once
    assert nxt is not None and nxt.count != 53


# -- the report -----------------------------------------------------------------------------------------
def _run(policy: str, lat: dict[str, list[float]], slo: dict[str, float], **kw: object) -> HostRun:
    arrays = {n: np.asarray(v, np.float32) for n, v in lat.items()}
    fields: dict[str, object] = {
        "policy": policy,
        "host": "h",
        "duration_s": 3600.0,
        "latencies": np.concatenate(list(arrays.values())),
        "windows": [],
        "slo": slo,
        "delivered": {},
        "roles": dict.fromkeys(slo, "sensitive"),
        "actions": 0,
        "reconfigs": 0,
        "moves": 0,
        "failed_ops": 0,
        "levels": [],
        "tenant_latencies": arrays,
        "arrivals": {n: len(v) for n, v in lat.items()},
        "served": {n: len(v) for n, v in lat.items()},
        "quantile": dict.fromkeys(slo, 0.99),
    }
    fields.update(kw)
    return HostRun(**fields)  # type: ignore[arg-type]


def test_request_level_fields_per_tenant_against_their_own_slo() -> None:
    scen = load_scenario("paper-p4d")
    # a: SLO 0.1 s, 2 of 10 over; b: SLO 1 s, none of its 5 over, but 5 more rejected (bad).
    a = [0.01] * 8 + [0.5, 0.2]
    b = [0.5] * 5
    r = _run(
        "static",
        {"a": a, "b": b},
        {"a": 0.1, "b": 1.0},
        arrivals={"a": 10, "b": 10},
        served={"a": 9, "b": 5},
        rejected={"a": 0, "b": 5},
        windows=[(2.0, "a", 30, 0.2), (4.0, "a", 30, 0.05), (2.0, "b", 3, 2.0)],
    )
    m = report.summarise(scen, {"static": [r]})["static"]
    ta, tb = m["tenants"]["a"], m["tenants"]["b"]
    assert ta["bad_request_fraction"] == 0.2 and ta["slo_ms"] == 100.0 and ta["requests"] == 10
    assert ta["served_fraction"] == 0.9 and ta["rejected_fraction"] == 0.0
    assert tb["bad_request_fraction"] == 0.5 and tb["rejected_fraction"] == 0.5 and tb["served_fraction"] == 0.5
    assert ta["p99_ms"] == pytest.approx(1000 * float(np.quantile(np.asarray(a, np.float32), 0.99)), rel=1e-5)
    # pooled: 2 + 5 bad of 20 judged; 14 of 20 served; 5 rejected
    assert m["bad_request_fraction"] == 0.35 and m["served_fraction"] == 0.7 and m["rejected_fraction"] == 0.25
    # windows: b's window has 3 < min_window_count (20) requests: none of b's count
    assert ta["windows_counted"] == 2 and ta["violation_rate"] == 0.5
    assert tb["windows_counted"] == 0 and tb["violation_rate"] is None
    assert m["windows_counted"] == 2 and m["violation_rate"] == 0.5


def test_violation_rate_is_null_not_zero_when_no_window_counted() -> None:
    scen = load_scenario("paper-p4d")
    r = _run("static", {"t1": [86.0] * 50}, {"t1": 0.015}, windows=[(2.0, "t1", 1, 86.0)] * 50)
    summary = report.summarise(scen, {"static": [r]})
    m = summary["static"]
    assert m["violation_rate"] is None and m["windows_counted"] == 0 and m["bad_request_fraction"] == 1.0
    text = report.table(scen, summary)
    row = next(ln for ln in text.splitlines() if ln.startswith("static"))
    assert "n/a" in row and "100.00%" in row and "0.0%" not in row
    assert json.loads(report.to_json(scen, 1, 3600.0, summary))["policies"]["static"]["violation_rate"] is None
    assert "| n/a | 100.00% |" in report.markdown_table(scen, summary)


def test_low_rate_tenant_end_to_end_reports_null() -> None:
    # paper-p4d's T1 at 0.2 requests/s: no 2 s window reaches min_window_count = 20.
    text = (SCENARIO_DIR / "paper-p4d.toml").read_text().replace("copies = 2", "copies = 1")
    text = text.replace("rate = 85.0", "rate = 0.2")
    scen = parse_scenario(text, "/tmp/low-rate.toml")
    r = run_host(scen, 0, "full", 600, seed=2)
    m = report.summarise(scen, {"full": [r]})["full"]
    assert m["windows_counted"] == 0 and m["violation_rate"] is None
    assert m["requests"] > 0 and m["bad_request_fraction"] is not None


def test_sensitive_throughput_counts_served_requests_not_arrivals() -> None:
    # T1 overloaded (service ~3-4 ms on its slice, 400 requests/s): a queue is left at the end.
    text = (SCENARIO_DIR / "paper-p4d.toml").read_text().replace("copies = 2", "copies = 1")
    scen = parse_scenario(text.replace("rate = 85.0", "rate = 400.0"), "/tmp/overload.toml")
    r = run_host(scen, 0, "static", 300, seed=2)
    assert r.served["t1"] < r.arrivals["t1"]
    assert r.delivered["t1"] == r.served["t1"]
    assert sum(x[2] for x in r.windows if x[1] == "t1") == r.served["t1"]


def test_replay_cli_exact_latency_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    out = tmp_path / "e.json"
    assert main(["replay", "--policies", "static", "--duration", "300", "--exact-latency", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["latency_view"] == "exact" and set(doc["policies"]["static"]["tenants"]) == {"t1"}
    text = capsys.readouterr().out
    assert "raw samples (--exact-latency)" in text and "bad req." in text
