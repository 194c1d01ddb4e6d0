"""LinuxHost = SignalCollector + Reconciler behind the Host protocol, driven by the daemon; and
`tailguard run` refusing a bad config with a message that names the file and key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from actuators.reconciler import Reconciler
from controller.cli import main
from controller.config import parse_config
from controller.daemon import Daemon, DaemonOptions
from controller.linux_host import LinuxHost
from controller.signals.base import Unavailable
from controller.signals.collect import SignalCollector
from fsm.topology import empty_topology

CONFIG = """
[host]
name = "h1"
mode = "dry-run"
[[tenants]]
name = "llm"
role = "sensitive"
slo_ms = 15
[tenants.latency]
kind = "jsonl"
path = "/nonexistent/latency.jsonl"
[[tenants]]
name = "etl"
role = "bulk"
cgroup = "etl.slice"
"""


class Broken:
    name = "nvml"
    timeout_s = 0.05

    async def sample(self, now: float) -> Unavailable:
        await asyncio.sleep(1)  # hangs past its timeout
        return Unavailable("never")


def test_linux_host_under_the_daemon(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG, "t.toml")
    topo = empty_topology()
    host = LinuxHost(
        cfg,
        topo,
        collector=SignalCollector(cfg, topo, samplers=[Broken()]),
        reconciler=Reconciler(journal_path=tmp_path / "journal.jsonl", dry_run=True, cgroup_root=str(tmp_path)),
    )
    assert set(host.spec.tenants) == {"llm", "etl"} and not host.spec.policy.enforce
    d = Daemon(host, DaemonOptions(host_name="h1", period_s=0.1, max_ticks=3, state_dir=str(tmp_path)))
    assert asyncio.run(d.run()) == 0
    snap = d.snapshot
    assert snap.ticks_total == 3 and snap.tick_errors_total == 0
    nvml = next(s for s in snap.samplers if s.name == "nvml")
    assert nvml.timeouts_total == 3 and not nvml.up
    assert "nvml" in snap.unavailable and "timed out" in snap.unavailable["nvml"]
    new = parse_config(CONFIG.replace("slo_ms = 15", "slo_ms = 30"), "t.toml")
    spec = host.reload(new)
    assert spec.tenants["llm"].slo_s == pytest.approx(0.030)


def test_run_refuses_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace("slo_ms = 15", "slo_ms = -1"))
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "tenants[0](llm).slo_ms" in err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["run", "--simulate", "--speed", "0"]) == 2
    assert "--speed must be positive" in capsys.readouterr().err


def test_finished_mig_change_invalidates_the_layout_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A MIG change reported done (or failed half-way) makes the next sample re-read that GPU's
    MIG devices; a signals alarm (GPU lost) is logged as a warning."""
    from fsm.observation import ActuationStatus, Observation, Outcome, TenantSample

    cfg = parse_config(CONFIG, "t.toml")
    topo = empty_topology()

    class Collector:
        events: tuple[str, ...] = ("gpu1: GPU is lost (NVML_ERROR_GPU_IS_LOST)",)

        def __init__(self) -> None:
            self.invalidated: list[str | None] = []

        async def collect(self, now: float) -> Observation:
            return Observation(t=now, tenants={"llm": TenantSample()})

        def invalidate_mig(self, gpu: str | None = None) -> None:
            self.invalidated.append(gpu)

    class Rec:
        def status(self) -> ActuationStatus:
            return ActuationStatus(
                outcomes=(Outcome("gpu:gpu0", ok=False, error="In use"), Outcome("tenant:llm", ok=True))
            )

        def recent_outages(self) -> dict[str, list[dict[str, object]]]:
            return {"llm": [{"kind": "move", "seconds": 12.5, "wall": 1.0}, {"kind": "resize", "seconds": 40.0}]}

    col = Collector()
    host = LinuxHost(cfg, topo, collector=col, reconciler=Rec())  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="tailguard.host"):
        obs = asyncio.run(host.observe())
    assert col.invalidated == ["gpu0"]  # the move (tenant:) does not change a layout
    # the last measured move outage reaches the decision core (a resize's includes the MIG wait,
    # and one recorded without its relaunch alone says nothing of the relaunch)
    assert obs.tenants["llm"].outage_s == 12.5
    Rec.recent_outages = lambda self: {  # type: ignore[method-assign]
        "llm": [{"kind": "move", "seconds": 12.5, "wall": 1.0}, {"kind": "resize", "seconds": 40.0, "relaunch_s": 22.0}]
    }
    assert asyncio.run(host.observe()).tenants["llm"].outage_s == 22.0  # a resize's relaunch, apart
    assert len(obs.actuation.outcomes) == 2
    assert "GPU is lost" in caplog.text


def test_a_source_slower_than_the_ticks_deadline_costs_the_whole_tick(tmp_path: Path) -> None:
    """Why check-config warns on a source timeout near the tick's deadline (config_checks
    `_slow_sources`): the sources are read together, so one that hangs past the deadline gets the
    tick skipped whole; inside it, only its own reading is lost."""

    def run(timeout_s: float) -> Daemon:
        cfg = parse_config(CONFIG, "t.toml")
        slow = Broken()
        slow.timeout_s = timeout_s
        host = LinuxHost(
            cfg,
            empty_topology(),
            collector=SignalCollector(cfg, empty_topology(), samplers=[slow]),
            reconciler=Reconciler(journal_path=tmp_path / "j.jsonl", dry_run=True, cgroup_root=str(tmp_path)),
        )
        opts = DaemonOptions(host_name="h1", period_s=0.1, max_ticks=2, state_dir=str(tmp_path), observe_timeout_s=0.3)
        d = Daemon(host, opts)
        assert asyncio.run(d.run()) == 0
        return d

    inside = run(0.05).snapshot
    assert inside.tick_errors_total == 0 and "nvml" in inside.unavailable
    past = run(0.6).snapshot
    assert past.tick_errors_total == 2 and not past.unavailable  # nothing was read: not even what answered
    (skipped,) = past.degraded
    assert skipped.name == "source:host.observe" and skipped.cause == "timed out after 0.3 s"
