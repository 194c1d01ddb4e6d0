"""End to end: `tailguard run --simulate --speed 50 --duration 600 --metrics-port P --mqtt-url
mqtt://127.0.0.1:Q` against a real mosquitto; scraped while it runs and checked with promtool;
the dashboard and alert rules only use metrics the live daemon exports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from fakes.daemon_fakes import Mosquitto, free_port, need_tool

ROOT = Path(__file__).resolve().parents[1]
TAILGUARD = [sys.executable, "-m", "controller.cli"]


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    scrapes: list[str]
    events: list[dict]
    broker: Mosquitto
    metrics_port: int


async def _collect_events(url_port: int, topic: str, out: list[dict], stop: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", url_port, identifier="e2e-events") as c:
        await c.subscribe(topic, qos=1)
        async for msg in c.messages:
            assert isinstance(msg.payload, bytes)
            out.append(json.loads(msg.payload))
            if stop.is_set():
                return


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("e2e")
    broker = Mosquitto(tmp).start()
    port = free_port()
    events: list[dict] = []

    async def main() -> Run:
        stop = asyncio.Event()
        sub = asyncio.create_task(_collect_events(broker.port, "tailguard/+/events", events, stop))
        await asyncio.sleep(0.3)
        # The command as an operator types it: --simulate with its default scenario (p4d-demo).
        cmd = [
            *TAILGUARD,
            "run",
            "--simulate",
            "--speed",
            "50",
            "--duration",
            "600",
            "--metrics-port",
            str(port),
            "--mqtt-url",
            broker.url,
            "--state-dir",
            str(tmp / "state"),
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        scrapes: list[str] = []
        deadline = time.monotonic() + 90
        while proc.returncode is None and time.monotonic() < deadline:
            text = await asyncio.to_thread(_scrape, port)
            if text:
                scrapes.append(text)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=1.0)
        if proc.returncode is None:
            proc.kill()
        out, err = await proc.communicate()
        await asyncio.sleep(0.5)
        stop.set()
        sub.cancel()
        return Run(proc.returncode or 0, out.decode(), err.decode(), scrapes, events, broker, port)

    try:
        yield asyncio.run(main())
    finally:
        broker.stop()


def test_simulated_run_exits_zero_by_itself_with_a_summary(e2e: Run) -> None:
    assert e2e.rc == 0, e2e.stderr[-2000:]
    assert "tailguard run summary" in e2e.stdout
    assert "stopped: duration reached" in e2e.stdout
    m = re.search(r"(\d+) ticks in ([\d.]+) s wall, host clock t=(\d+) s; (\d+) overruns", e2e.stdout)
    assert m, e2e.stdout
    ticks, wall, t = int(m[1]), float(m[2]), int(m[3])
    assert 600 <= t < 620 and ticks >= 60  # 120 unless a loaded machine made some overrun
    assert wall < 30  # 600 simulated seconds at speed 50 = 12 s
    assert "escalate" in e2e.stdout  # decisions printed as they happen


def test_events_arrive_on_the_broker_with_their_evidence(e2e: Run) -> None:
    assert e2e.events, "no decision events reached the broker"
    kinds = {e["kind"] for e in e2e.events}
    assert "escalate" in kinds
    e = next(x for x in e2e.events if x["kind"] == "escalate")
    assert e["host"] == "sim-p4d" and e["tenant"] == "t1" and e["reason"]
    assert isinstance(e["evidence"], dict) and e["evidence"]
    seqs = [x["seq"] for x in e2e.events]
    assert seqs == sorted(seqs)


def test_retained_state_is_there_for_a_late_subscriber(e2e: Run) -> None:
    async def late() -> dict:
        async with aiomqtt.Client("127.0.0.1", e2e.broker.port, identifier="late") as c:
            await c.subscribe("tailguard/sim-p4d/state", qos=1)
            async for msg in c.messages:
                assert msg.retain
                assert isinstance(msg.payload, bytes)
                return dict(json.loads(msg.payload))
        raise AssertionError("unreachable")

    state = asyncio.run(asyncio.wait_for(late(), 10))
    assert state["schema"] == "tailguard.status/1" and state["host"] == "sim-p4d"
    assert state["ticks_total"] >= 60 and "t1" in state["tenants"]


def test_metrics_served_while_running_pass_promtool(e2e: Run, tmp_path: Path) -> None:
    promtool = need_tool("promtool")
    assert len(e2e.scrapes) >= 3, "the metrics endpoint did not answer while the daemon ran"
    text = e2e.scrapes[-1]
    assert "tailguard_ticks_total" in text and "tailguard_mqtt_connected 1.0" in text
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr
    # Base units and counter naming, the parts promtool does not insist on.
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].startswith("tailguard_")
        assert "_milliseconds" not in line and "_bytes_total_total" not in line
    # Scrapes show the daemon moving: ticks grow between scrapes.
    ticks = [float(m[1]) for s in e2e.scrapes if (m := re.search(r"^tailguard_ticks_total (\S+)", s, re.M))]
    assert ticks == sorted(ticks) and ticks[-1] > ticks[0]


PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "clamp_min",
    "histogram_quantile",
    "min_over_time",
    "max_over_time",
    "label_values",
    "without",
    "on",
    "ignoring",
    "group_left",
    "avg",
    "max",
    "min",
    "count",
    "and",
    "or",
    "unless",
    "le",
    "time",
    "abs",
    "humanizePercentage",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings and durations removed)."""
    expr = re.sub(r"label_values\(([^,]+),\s*\w+\)", r"\1", expr)
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", n)}


def exported(text: str) -> set[str]:
    """Sample names, and the families the exposition declares (`# TYPE name kind`): a family with no
    sample at the moment (no cap in force during any scrape, say) is still one the daemon exports."""
    lines = text.splitlines()
    names = {ln.split("{")[0].split(" ")[0] for ln in lines if ln and not ln.startswith("#")}
    return names | {ln.split()[2] for ln in lines if ln.startswith("# TYPE ") and len(ln.split()) >= 4}


def test_dashboard_and_alert_rules_use_only_exported_metrics(e2e: Run) -> None:
    have = set().union(*(exported(s) for s in e2e.scrapes)) | {"up"}  # `up` is Prometheus' own
    dash = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(exprs) >= 10
    used: set[str] = set()
    for e in exprs:
        used |= metric_names(e)
    rules = (ROOT / "monitoring" / "tailguard-rules.yml").read_text()
    rule_exprs = re.findall(r"expr: \|?\n?((?:.*\n)*?)\s*(?:for|labels):", rules)
    assert len(rule_exprs) == 7
    for e in rule_exprs:
        used |= metric_names(e)
    missing = sorted(used - have)
    assert not missing, f"not exported by the daemon: {missing}"
    assert {"tailguard_tenant_latency_seconds", "tailguard_tick_duration_seconds_bucket"} <= used


def test_metric_name_extraction_is_not_vacuous() -> None:
    assert metric_names('sum by (le) (rate(foo_bucket{a="b"}[5m])) / bar') == {"foo_bucket", "bar"}
    assert metric_names("label_values(tailguard_build_info, instance)") == {"tailguard_build_info"}
