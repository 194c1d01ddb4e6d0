"""Loud degraded mode: named conditions with cause and since-when (controller/degraded.py); one log
line per unavailable source at start and on each change, never once per tick; READY=1 after the
first good tick even with sources down; STATUS= names them; a metric per source; the journal's
versions (unversioned records read as version 0)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from actuators.journal import SCHEMA_VERSION, Journal
from actuators.reconciler import Reconciler
from controller.config import parse_config
from controller.daemon import Daemon, DaemonOptions
from controller.degraded import Degraded, source_conditions, summary
from controller.exporters.prometheus import DaemonCollector, make_registry
from controller.linux_host import LinuxHost
from controller.sdnotify import Notifier
from controller.signals.base import Unavailable
from controller.signals.collect import SignalCollector
from controller.status import render, status_json
from fsm.topology import empty_topology

CONFIG = """
[host]
name = "h1"
[[tenants]]
name = "etl"
role = "bulk"
cgroup = "etl.slice"
"""


def test_conditions_keep_their_start_and_log_once(caplog: pytest.LogCaptureFixture) -> None:
    t = [100.0]
    d = Degraded(clock=lambda: t[0])
    caplog.set_level(logging.WARNING, "tailguard.degraded")
    assert d.set("journal", "ENOSPC", "host") and not d.set("journal", "ENOSPC again", "host")
    t[0] = 130.0
    d.sync("source", source_conditions({"nvml": "no driver", "dcgm": "no hostengine"}))
    d.sync("source", source_conditions({"nvml": "no driver", "dcgm": "still none"}))
    (j,) = [c for c in d.conditions() if c.name == "journal"]
    assert (j.cause, j.since) == ("ENOSPC again", 100.0)  # the cause follows, the start stays
    assert d.names("source") == ["source:dcgm", "source:nvml"]
    d.sync("source", {})
    assert d.names() == ["journal"] and "journal" in d and d
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "degraded: journal: ENOSPC",
        "degraded: source:dcgm: no hostengine",
        "degraded: source:nvml: no driver",
        "recovered: source:dcgm (degraded for 0 s: still none)",
        "recovered: source:nvml (degraded for 0 s: no driver)",
    ]
    assert summary(d.conditions()) == "journal"
    many = tuple(Degraded().conditions())
    assert summary(many) == ""


class Flappy:
    """Down on ticks 0-2 (no driver), up on 3-5, down again from 6 (a timeout)."""

    name = "nvml"
    timeout_s = 1.0

    def __init__(self) -> None:
        self.n = 0

    async def sample(self, now: float) -> object:
        self.n += 1
        if self.n <= 3:
            return Unavailable("NVML: driver not loaded")
        if self.n <= 6:
            return {"ok": True}
        return Unavailable("timed out after 1 s")


def test_sources_are_loud_once_per_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(CONFIG, "t.toml")
    topo = empty_topology()
    host = LinuxHost(
        cfg,
        topo,
        collector=SignalCollector(cfg, topo, samplers=[Flappy()]),
        reconciler=Reconciler(journal_path=tmp_path / "j.jsonl", dry_run=True, cgroup_root=str(tmp_path)),
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    d = Daemon(host, DaemonOptions(host_name="h1", period_s=0.02, max_ticks=9, state_dir=str(tmp_path)),
               notifier=Notifier(address=str(tmp_path / "notify")))  # fmt: skip
    caplog.set_level(logging.INFO, "tailguard")
    snaps: list[object] = []
    msgs: list[str] = []

    def drain() -> None:  # each tick: the socket's queue holds only a few datagrams (net.unix.max_dgram_qlen)
        while True:
            try:
                msgs.append(sock.recv(65536).decode())
            except BlockingIOError:
                return

    class Spy:
        def on_tick(self, snap: object) -> None:
            snaps.append(snap)
            drain()

        def on_events(self, events: object) -> None:
            return

    d.exporters.append(Spy())
    assert asyncio.run(d.run()) == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "tailguard.degraded"]
    assert logged == [
        "degraded: source:nvml: NVML: driver not loaded",
        "recovered: source:nvml (degraded for 0 s: NVML: driver not loaded)",
        "degraded: source:nvml: timed out after 1 s",
    ]
    drain()
    sock.close()
    # READY=1 once, after the first good tick, although a source was down; STATUS= names it.
    ready = [m for m in msgs if "READY=1" in m]
    assert len(ready) == 1 and "unavailable: nvml" in ready[0]
    statuses = [m for m in msgs if m.startswith("STATUS=")]
    assert any("all sources available" in m for m in statuses) and "unavailable: nvml" in statuses[-1]
    # A metric per source: 0 while down, 1 while up (the series stays once seen).
    up = [s.sources.get("nvml") for s in snaps]  # type: ignore[attr-defined]
    assert up[:3] == [False] * 3 and up[3:6] == [True] * 3 and up[6:] == [False] * 3
    text = generate_latest(make_registry(DaemonCollector(lambda: d.snapshot))).decode()
    assert 'tailguard_source_available{source="nvml"} 0.0' in text
    assert 'tailguard_source_available{source="host.observe"} 1.0' in text
    assert 'tailguard_degraded{condition="source:nvml",group="source"} 1.0' in text
    data = json.loads(json.dumps(status_json(d.snapshot)))
    assert data["state"] == "stopped" and data["degraded"]["source:nvml"]["cause"] == "timed out after 1 s"
    out = render(data, now=data["wall"])
    assert "DEGRADED (1):" in out and "source:nvml: timed out after 1 s" in out and "stopped 0 s ago" in out


def test_unversioned_records_are_read_as_version_0(tmp_path: Path) -> None:
    """A journal written before versioning (no "v") is read as it is; new records carry v=1."""
    p = tmp_path / "journal.jsonl"
    old = {"t": 1.0, "seq": 1, "kind": "throttle", "phase": "intent", "action": "set", "cgroup": "g", "dev": "8:0",
           "tenant": "etl", "rbps": None, "wbps": 1000, "expires_at": 2e9}  # fmt: skip
    p.write_text(json.dumps(old) + "\n")
    j = Journal(p)
    j.append("throttle", phase="done", action="set", cgroup="g", dev="8:0", tenant="etl", rbps=None, wbps=1000,
             expires_at=2e9)  # fmt: skip
    recs = j.tail_from_snapshot()
    assert [r.get("v") for r in recs] == [None, SCHEMA_VERSION] and recs[0]["kind"] == "throttle"
    assert j.stats.newer_records_total == 0
    j.close()
    with p.open("a") as f:  # a record from a later version (a downgrade): read, counted
        f.write(json.dumps({**old, "v": SCHEMA_VERSION + 1, "seq": 3, "future_field": 1}) + "\n")
    j2 = Journal(p)
    assert len(j2.tail_from_snapshot()) == 3 and j2.stats.newer_records_total == 1


def test_status_shows_outages_and_journal_trouble() -> None:
    data = {
        "host": "h1", "wall": 1000.0, "period_s": 2.0, "state": "running", "mode": "enforce", "ticks_total": 5,
        "tenants": {}, "throttles": [], "in_flight": [],
        "degraded": {"journal": {"cause": "journal /x: cannot write: No space left on device", "since": 940.0,
                                 "group": "host"}},
        "outages": {"llm": [{"kind": "move", "seconds": 12.5, "wall": 900.0},
                            {"kind": "warm_move", "seconds": 0.0, "wall": 990.0}]},
        "journal": {"failing": True, "last_error": "journal /x: cannot write: No space left on device",
                    "errors_total": {"ENOSPC": 3}, "reopens_total": 0, "torn_repairs_total": 1},
    }  # fmt: skip
    out = render(data, now=1001.0)
    assert "running" in out and "DEGRADED (1):" in out and "(for 61 s)" in out
    assert "  llm: move 12.5 s, warm_move 0.0 s" in out
    assert "journal: FAILING: journal /x: cannot write: No space left on device; write errors ENOSPC 3" in out
    assert "starting (no good tick yet)" in render({**data, "state": "starting"}, now=1001.0)
