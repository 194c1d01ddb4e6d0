"""A tenant's history before the controller first saw it: the requests its latency source counted
since its server started and that server's uptime (TenantSample.served_total, uptime_s). The live
sampler reads them off the scrape (the histogram's cumulative count, process_start_time_seconds),
the lab gives them for a server up `requests.uptime_s` before the run, and the core seeds the
tenant's usual rate with them (fsm.usual_rate.served_before)."""

from __future__ import annotations

import asyncio
import math
import tomllib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from fakes.fixture_paths import FIXTURES
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from controller.signals.base import Unavailable
from controller.signals.latency import LatencyReading, PrometheusLatencySampler, server_start
from controller.signals.promtext import parse_samples
from fsm.decide import decide
from fsm.observation import LatencyWindow, Observation, TenantSample
from fsm.sanitize import sanitize
from fsm.spec import HostSpec, Policy, Role, TenantSpec
from fsm.state import ControllerState
from fsm.topology import empty_topology
from fsm.usual_rate import served_before, usual_rate
from replay.arrivals import load_request_trace, trace_cycle
from replay.scenario import SCENARIO_DIR, scenario_from_data
from replay.simulator import HostSim

VLLM = (FIXTURES / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom").read_text()
TAU = Policy().outage_budget_window_s


# -- the core --------------------------------------------------------------------------------------
def test_served_before_is_the_lifetime_rate_over_the_seconds_the_decay_keeps() -> None:
    """Up U seconds with N requests before this window: rate N / U, over tau (1 - e^(-U/tau))
    seconds; the spread is Poisson's (dispersion 1 at this window's seconds)."""
    ts = TenantSample(served_total=3600.0 + 10.0, uptime_s=7200.0 + 5.0)
    n, s = served_before(ts, 10.0, 5.0, TAU) or (0.0, 0.0)
    keep = -TAU * math.expm1(-7200.0 / TAU)
    assert s == pytest.approx(keep) and n / s == pytest.approx(0.5)
    long = served_before(TenantSample(served_total=1e9, uptime_s=1e9), 0.0, 5.0, TAU)
    assert long is not None and long[1] == pytest.approx(TAU)  # weeks of history weigh one window


@pytest.mark.parametrize(
    "ts",
    [
        TenantSample(),  # a source without them (JSON lines, MQTT)
        TenantSample(served_total=100.0),  # no uptime (no process_start_time_seconds)
        TenantSample(served_total=12.0, uptime_s=4.0),  # started within this window
        TenantSample(served_total=5.0, uptime_s=600.0),  # fewer than this window's: counters reset
    ],
)
def test_nothing_is_known_without_both_or_when_they_do_not_add_up(ts: TenantSample) -> None:
    assert served_before(ts, 10.0, 5.0, TAU) is None


def _host() -> HostSpec:
    t = TenantSpec("llm", Role.SENSITIVE, "llm.slice", "gpu0", None, 0.2)
    return HostSpec(empty_topology(), {"llm": t}, Policy())


def _obs(t: float, count: int, history: tuple[float, float] | None) -> Observation:
    w = LatencyWindow(count, 0.05, 0.1, 0.15, over_slo=0.0)
    ts = TenantSample(latency=w)
    if history is not None:
        ts = replace(ts, served_total=history[0], uptime_s=history[1])
    return Observation(t=t, tenants={"llm": ts})


def test_the_usual_rate_starts_from_the_history_and_without_it_from_the_first_windows() -> None:
    """A tenant seen at 10 requests/s in its first two windows, whose server served 1 request/s in
    the 24 hours before: with the history its usual rate is about the day's (tau of it weighs more
    than 5 s at 10/s), without it the first minute's. The first window spans no known seconds; the
    second seeds it. The spread of its counts stays that of the windows watched."""
    spec = _host()
    day = 86400.0
    runs = {}
    sqs = {}
    for label, hist in (("history", True), ("none", False)):
        state = ControllerState()
        for i, t in enumerate((1000.0, 1005.0)):
            total, up = day * 1.0 + 50.0 * (i + 1), day + 5.0 * (i + 1)
            state = decide(state, _obs(t, 50, (total, up) if hist else None), spec).state
        runs[label] = usual_rate(state.tenants["llm"])
        sqs[label] = (state.tenants["llm"].served, state.tenants["llm"].served_sq)
    assert sqs["history"] == sqs["none"]
    assert runs["none"] == pytest.approx(100.0 / 5.0, rel=1e-3)  # the first window's count without its seconds
    rate = runs["history"]
    assert rate is not None and 1.0 < rate < 1.05  # (day's + 50 of the first window) / (tau + 5 s)


def test_a_bad_history_is_named_and_dropped() -> None:
    obs = _obs(1000.0, 5, (-3.0, math.inf))
    clean, why = sanitize(obs)
    ts = clean.tenants["llm"]
    assert ts.served_total is None and ts.uptime_s is None
    assert set(why) == {"tenant.llm.served_total: negative", "tenant.llm.uptime_s: infinite"}


# -- the live sampler ----------------------------------------------------------------------------------
def _process_lines(start: float) -> str:
    """What prometheus_client's process collector exports (the real library's text), with its start
    time set: a vLLM server's /metrics carries these lines unless it runs in multiprocess mode."""
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    text = generate_latest(reg).decode()
    assert "process_start_time_seconds " in text
    return "".join(
        f"process_start_time_seconds {start}\n" if line.startswith("process_start_time_seconds ") else line + "\n"
        for line in text.splitlines()
    )


def test_the_sampler_reads_the_count_so_far_and_the_uptime_off_the_scrape() -> None:
    page = {"text": VLLM + _process_lines(1_700_000_000.0)}

    async def fetch(url: str, timeout_s: float) -> str:
        return page["text"]

    async def run() -> None:
        s = PrometheusLatencySampler("llm", "http://127.0.0.1:1/metrics", fetch=fetch, wall=lambda: 1_700_003_600.0)
        await s.sample(0.0)
        r = await s.sample(2.0)
        assert isinstance(r, LatencyReading)
        h = s.parse(page["text"])
        assert not isinstance(h, Unavailable) and r.served_total == h.total > 0
        assert r.uptime_s == pytest.approx(3600.0)
        page["text"] = VLLM  # multiprocess mode: no process metrics
        r = await s.sample(4.0)
        assert isinstance(r, LatencyReading) and r.served_total is None and r.uptime_s is None
        page["text"] = VLLM + _process_lines(1_700_009_999.0)  # started after the wall clock's now
        r = await s.sample(6.0)
        assert isinstance(r, LatencyReading) and r.uptime_s is None and r.served_total is None

    asyncio.run(run())


def test_the_collector_puts_the_history_in_the_tenant_sample() -> None:
    """From the scrape to the observation the decision core gets (controller/signals/collect.py)."""
    from controller.config import parse_config
    from controller.signals.collect import SignalCollector

    page = VLLM + _process_lines(1_700_000_000.0)

    async def fetch(url: str, timeout_s: float) -> str:
        return page

    cfg = parse_config(
        """
[[tenants]]
name = "llm"
role = "sensitive"
slo_ms = 100
latency = { kind = "prometheus", url = "http://127.0.0.1:1/metrics" }
"""
    )
    sampler = PrometheusLatencySampler(
        "latency:llm", "http://127.0.0.1:1/metrics", fetch=fetch, wall=lambda: 1_700_000_600.0
    )

    async def run() -> Observation:
        c = SignalCollector(cfg, empty_topology(), [sampler])
        await c.collect(100.0)
        return await c.collect(102.0)

    ts = asyncio.run(run()).tenants["llm"]
    assert ts.latency is not None and ts.uptime_s == pytest.approx(600.0)
    h = sampler.parse(page)
    assert not isinstance(h, Unavailable) and ts.served_total == h.total


def test_a_labelled_or_repeated_start_is_not_taken() -> None:
    one = parse_samples("process_start_time_seconds 1.7e9\n", ["process_start_time_seconds"], "x")
    assert server_start(one) == 1.7e9
    two = parse_samples(
        'process_start_time_seconds{pid="1"} 1.7e9\nprocess_start_time_seconds{pid="2"} 1.8e9\n',
        ["process_start_time_seconds"],
        "x",
    )
    assert server_start(two) is None


# -- pushed over MQTT --------------------------------------------------------------------------------
def test_a_pushed_message_may_carry_the_history_and_a_bad_one_is_refused_whole() -> None:
    from controller.exporters.mqtt import PushedCounts, PushedHistory, parse_push

    start = 1_700_000_000.0
    assert parse_push(b'{"count": 40, "over_slo": 1, "served_total": 9040, "started_at": 1700000000}') == (
        PushedCounts(40, 1.0),
        PushedHistory(9040.0, start),
    )
    assert parse_push(b'{"latency_s": [0.1, 0.2], "served_total": 2, "started_at": 1.7e9}') == (
        [0.1, 0.2],
        PushedHistory(2.0, 1.7e9),
    )
    assert parse_push(b'{"count": 4, "over_slo": 0}') == (PushedCounts(4, 0.0), None)
    assert parse_push(b"[0.1]") == ([0.1], None)
    for bad, msg in [
        (b'{"count": 4, "over_slo": 0, "served_total": 90}', "served_total without started_at"),
        (b'{"latency_s": 0.1, "started_at": 1.7e9}', "started_at without served_total"),
        (b'{"count": 4, "over_slo": 0, "served_total": 3, "started_at": 1.7e9}', "below the message's own 4"),
        (b'{"count": 4, "over_slo": 0, "served_total": -1, "started_at": 1.7e9}', "served_total -1"),
        (b'{"count": 4, "over_slo": 0, "served_total": true, "started_at": 1.7e9}', "served_total True"),
        (b'{"count": 4, "over_slo": 0, "served_total": NaN, "started_at": 1.7e9}', "served_total"),
        (b'{"count": 4, "over_slo": 0, "served_total": 9, "started_at": 1.7e12}', "Unix seconds"),  # ms
        (b'{"count": 4, "over_slo": 0, "served_total": 9, "started_at": "today"}', "started_at"),
        (b'{"count": 4, "over_slo": 0, "served_total": 9, "started_at": 12}', "Unix seconds"),
        (b'{"latency_s": 0.1, "served_total": 9, "started_at": 1.7e9, "pid": 3}', "unknown keys"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_push(bad)


def test_the_daemon_puts_a_pushed_history_in_the_next_observation_only() -> None:
    """The bridge hands a message's history to the daemon, which gives it, against the Unix clock,
    to the next observation of that tenant: the newest start and within it the largest count win
    (messages may come out of order); a start in the future gives no seconds; a message refused
    whole gives nothing."""
    import json

    from fakes.daemon_fakes import ToyHost

    from controller.daemon import Daemon, DaemonOptions
    from controller.exporters.mqtt import MqttBridge, MqttOptions
    from fsm.decide import Decision

    seen: list[Observation] = []

    def spy(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        seen.append(obs)
        return decide(state, obs, spec)

    wall = 1_700_003_600.0
    d = Daemon(ToyHost(), DaemonOptions(period_s=0.01, max_ticks=2), decide_fn=spy, wall=lambda: wall)
    bridge = MqttBridge(MqttOptions(), on_latency=d.push_latency, on_counts=d.push_counts, on_history=d.push_history)
    start = wall - 3600.0

    def push(tenant: str, **kw: float) -> None:
        bridge._ingest(tenant, json.dumps({"count": 10, "over_slo": 0, **kw}).encode())

    push("llm", served_total=5000, started_at=start)
    push("llm", served_total=4990, started_at=start)  # an older message, late
    push("llm", served_total=70, started_at=start - 86400)  # a start before: another process's
    push("llm", served_total=2, started_at=start)  # refused whole: below its own 10
    push("ghost", served_total=50, started_at=start)
    assert bridge.stats.malformed_total == {"latency_payload": 1, "unknown_tenant": 1}
    asyncio.run(d.run())
    first = seen[0].tenants["llm"]
    assert first.latency is not None and first.latency.count == 30
    assert first.served_total == 5000 and first.uptime_s == pytest.approx(3600.0)
    nxt = seen[1].tenants["llm"]
    assert nxt.served_total is None and nxt.uptime_s is None  # consumed once, as the window

    d2 = Daemon(ToyHost(), DaemonOptions(period_s=0.01, max_ticks=1), decide_fn=spy, wall=lambda: wall)
    seen.clear()
    d2.push_counts("llm", 10, 0.0)
    assert d2.push_history("llm", 5000.0, wall + 60.0)  # a clock off: the count, no seconds
    asyncio.run(d2.run())
    ts = seen[0].tenants["llm"]
    assert ts.served_total == 5000 and ts.uptime_s is None


# -- a JSON-lines file with each request's time ---------------------------------------------------
def test_a_jsonl_file_with_request_times_gives_the_lines_already_there_as_history(tmp_path: Any) -> None:
    """`time_field`: the lines in the file at the first tick are requests served before, since the
    first line's time; without the field, or with a first line whose time is missing or in
    milliseconds, no history."""
    import json

    from controller.signals.latency import JsonlLatencySampler

    start = 1_700_000_000.0
    f = tmp_path / "lat.jsonl"
    f.write_text("".join(json.dumps({"latency_s": 0.05, "t": start + 3.6 * i}) + "\n" for i in range(1000)))

    def read(sampler: JsonlLatencySampler, now: float) -> LatencyReading:
        r = asyncio.run(sampler.sample(now))
        assert isinstance(r, LatencyReading)
        return r

    s = JsonlLatencySampler("latency:llm", str(f), slo_s=0.1, time_field="t", wall=lambda: start + 3600.0)
    first = read(s, 0.0)
    assert first.window.count == 0 and first.served_total == 1000 and first.uptime_s == pytest.approx(3600.0)
    with f.open("a") as fh:
        fh.write("".join(json.dumps({"latency_s": 0.2, "t": start + 3600.0}) + "\n" for _ in range(5)))
    nxt = read(s, 2.0)
    assert nxt.window.count == 5 and nxt.served_total == 1005  # this window's included, as a histogram's
    plain = read(JsonlLatencySampler("latency:llm", str(f), slo_s=0.1), 0.0)
    assert plain.served_total is None and plain.uptime_s is None
    for first_line in ('{"latency_s": 0.05}\n', '{"latency_s": 0.05, "t": 1700000000000}\n'):  # none, ms
        g = tmp_path / "other.jsonl"
        g.write_text(first_line + f.read_text())
        odd = read(JsonlLatencySampler("latency:llm", str(g), slo_s=0.1, time_field="t"), 0.0)
        assert odd.served_total is None and odd.uptime_s is None


def test_time_field_is_a_jsonl_sources_own() -> None:
    from controller.config import ConfigError, parse_config

    base = (
        '[[tenants]]\nname = "llm"\nrole = "sensitive"\nslo_ms = 100\nrelaunch_s = 30\n'
        "latency = {{ kind = {kind}, {where}, time_field = {tf} }}\n"
    )
    ok = parse_config(base.format(kind='"jsonl"', where='path = "/var/log/llm.jsonl"', tf='"t"'))
    assert ok.tenants[0].latency is not None and ok.tenants[0].latency.time_field == "t"
    with pytest.raises(ConfigError, match=r"latency\.time_field: is read from a JSON-lines file"):
        parse_config(base.format(kind='"prometheus"', where='url = "http://127.0.0.1:8000/metrics"', tf='"t"'))
    with pytest.raises(ConfigError, match=r"latency\.time_field: 'latency_s' is also field"):
        parse_config(base.format(kind='"jsonl"', where='path = "/var/log/llm.jsonl"', tf='"latency_s"'))


# -- the lab -------------------------------------------------------------------------------------------
def _vllm_ttft(uptime_s: float) -> Any:
    data = tomllib.loads((SCENARIO_DIR / "vllm-ttft.toml").read_text(encoding="utf-8"))
    for host in data["hosts"]:
        for t in host["tenants"]:
            if t.get("role") == "sensitive":
                t["requests"]["uptime_s"] = uptime_s
    return scenario_from_data(data, "vllm-ttft")


def test_the_lab_counts_the_trace_before_the_run_and_leaves_the_run_as_it_was() -> None:
    """Up 2 h before: the first window's served_total is the trace's requests in the 2 h before its
    start (it cycles backwards too) thinned by the schedule, plus the window's; uptime is 2 h plus
    the run's seconds. The run's own arrivals and latencies are those of uptime 0 (its own draws)."""
    up = 7200.0
    runs = {}
    for u in (0.0, up):
        sc = _vllm_ttft(u)
        sim = HostSim(sc.hosts[0], sc.meta, sc.meta.seed)
        obs = [sim.advance() for _ in range(40)]
        runs[u] = (sc, sim, obs)
    sc, sim, obs = runs[up]
    name = next(iter(sim.sensitive))
    first = next(o for o in obs if o is not None and o.tenants[name].latency is not None)
    ts = first.tenants[name]
    assert ts.uptime_s == pytest.approx(up + first.t)
    req = sim.sensitive[name].req
    times = load_request_trace(str(SCENARIO_DIR.parent / "data" / str(req.trace)))[0] / req.trace_speed
    cycle = trace_cycle(times * req.trace_speed) / req.trace_speed
    k = math.ceil(up / cycle)
    before = sum(int(np.sum(times >= j * cycle - up)) for j in range(1, k + 1))  # the cycles' tails
    level = sim.sensitive[name].cfg.schedule.active(-1.0)
    assert ts.latency is not None and ts.served_total is not None
    history = ts.served_total - ts.latency.count
    assert history == pytest.approx(before * level, rel=0.05)
    base = runs[0.0][1].stats
    assert base.served == sim.stats.served
    for a, b in zip(base.latencies, sim.stats.latencies, strict=True):
        assert np.array_equal(a, b)
    plain = runs[0.0][2]
    w0 = next(o for o in plain if o is not None and o.tenants[name].latency is not None).tenants[name]
    assert w0.latency is not None and w0.served_total == w0.latency.count and w0.uptime_s == pytest.approx(first.t)
