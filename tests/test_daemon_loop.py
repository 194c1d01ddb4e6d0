"""The control loop: scheduling without drift, overruns, hung sources, signals, sd_notify, state."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from fakes.daemon_fakes import ToyHost

from controller.daemon import Daemon, DaemonOptions
from controller.sdnotify import Notifier
from controller.status import read_status, render
from fsm.decide import Decision, decide
from fsm.observation import Observation
from fsm.spec import HostSpec
from fsm.state import ControllerState


def run(d: Daemon) -> int:
    return asyncio.run(d.run())


def test_ticks_follow_the_monotonic_grid_without_drift() -> None:
    host = ToyHost()
    period = 0.04
    d = Daemon(host, DaemonOptions(period_s=period, max_ticks=40))
    assert run(d) == 0
    ts = host.observed_at
    assert len(ts) == 40
    # Each tick starts near start + k * period; sleep jitter does not add up over 40 ticks.
    errors = [t - (ts[0] + k * period) for k, t in enumerate(ts)]
    assert max(abs(e) for e in errors) < period * 0.75, errors
    assert abs(errors[-1]) < period * 0.75
    assert d.snapshot.overruns_total == 0
    assert d.snapshot.ticks_total == 40


def test_a_wall_clock_duration_stops_mid_period_not_a_period_late() -> None:
    # run --duration on a real host with a long sample_period_s ran a whole period past it
    import time

    d = Daemon(ToyHost(), DaemonOptions(period_s=30.0, stop_after_s=0.3))
    t0 = time.monotonic()
    assert run(d) == 0
    assert time.monotonic() - t0 < 5.0
    assert d.snapshot.ticks_total == 1 and d.stop_reason == "duration reached"


def test_an_overrun_is_counted_once_and_slots_are_skipped_not_caught_up() -> None:
    period = 0.05
    host = ToyHost(slow_on={5: period * 2.5})
    d = Daemon(host, DaemonOptions(period_s=period, max_ticks=12, observe_timeout_s=1.0))
    run(d)
    ts = host.observed_at
    assert d.snapshot.overruns_total == 1
    # After the slow tick the loop resumes on the grid (slot 8), with no burst of quick ticks.
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert min(gaps[6:]) > period * 0.5, gaps
    k = round((ts[6] - ts[0]) / period)
    assert k == 8 and abs(ts[6] - (ts[0] + k * period)) < period * 0.5


def test_a_hung_observe_is_abandoned_and_the_loop_keeps_ticking() -> None:
    host = ToyHost(hang_on={2}, fail_on={4})
    d = Daemon(host, DaemonOptions(period_s=0.05, max_ticks=8, observe_timeout_s=0.1))
    run(d)
    assert d.snapshot.ticks_total == 8
    assert d.snapshot.tick_errors_total == 2  # the hung one and the failing one
    assert host.closed


def test_decisions_flow_to_the_host_and_the_status_file(tmp_path: Path) -> None:
    host = ToyHost()
    d = Daemon(host, DaemonOptions(host_name="toy", period_s=0.005, max_ticks=60, state_dir=str(tmp_path)))
    run(d)
    snap = d.snapshot
    assert snap.events_total > 0
    assert any(k[0] == "guard" for k in snap.actions), snap.actions
    assert any(desired.throttles for desired in host.applied)
    assert snap.tenants["llm"].windows_total == 60
    assert snap.tenants["llm"].violating_windows_total > 0
    data = read_status(tmp_path / "status.json")
    assert data["host"] == "toy" and data["ticks_total"] == 60
    assert data["recent_events"]
    text = render(data, now=data["wall"])
    # Written on the way out: a clean exit reads "stopped", not "running" until the file goes stale.
    assert data["state"] == "stopped" and data["stop_reason"] == "max ticks reached"
    assert "llm" in text and "stopped 0 s ago (max ticks reached)" in text and "last decision" in text
    # The controller state survives a restart.
    saved = ControllerState.from_json((tmp_path / "state.json").read_text())
    d2 = Daemon(ToyHost(), DaemonOptions(period_s=0.005, max_ticks=1, state_dir=str(tmp_path)))
    assert d2.state == saved


def test_a_state_file_with_a_key_twice_is_not_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by fuzzing state.json: the last of the two values was resumed. to_json never writes a
    key twice: the daemon starts from a clean state, saying which key and which file."""
    text = ControllerState(seq=7).to_json()
    assert text.count('"seq":7') == 1
    p = tmp_path / "state.json"
    p.write_text(text.replace('"seq":7', '"seq":7,"seq":900'))
    with caplog.at_level("WARNING", logger="tailguard.daemon"):
        d = Daemon(ToyHost(), DaemonOptions(period_s=0.005, max_ticks=1, state_dir=str(tmp_path)))
    assert d.state == ControllerState()
    assert f"{p}: cannot resume (key 'seq' given twice in one object); starting from a clean state" in caplog.text
    p.write_text(text)
    assert Daemon(ToyHost(), DaemonOptions(period_s=0.005, max_ticks=1, state_dir=str(tmp_path))).state.seq == 7


def test_stale_status_is_reported(tmp_path: Path) -> None:
    d = Daemon(ToyHost(), DaemonOptions(period_s=0.01, max_ticks=2, state_dir=str(tmp_path)))
    run(d)
    data = read_status(tmp_path / "status.json")
    assert "stopped 10 min ago" in render(data, now=data["wall"] + 600)  # a clean exit is not "stale"
    # A killed daemon leaves its last tick's file (state "running"): old, so stale.
    assert "STALE" in render({**data, "state": "running"}, now=data["wall"] + 600)


def test_pushed_latency_reaches_the_decision_core() -> None:
    seen: list[Observation] = []

    def spy(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        seen.append(obs)
        return decide(state, obs, spec)

    host = ToyHost()
    d = Daemon(host, DaemonOptions(period_s=0.01, max_ticks=3), decide_fn=spy)
    assert d.push_latency("llm", [0.5] * 30 + [0.001] * 70)
    assert not d.push_latency("nobody", [0.1])
    run(d)
    lat = seen[0].tenants["llm"].latency
    assert lat is not None and lat.count == 100 and lat.quantile(0.99) == pytest.approx(0.5)
    # its quantiles ride along: the core's median readers (a queue, a drained backlog) read p50
    assert lat.p50 == pytest.approx(0.001) and lat.p99 == pytest.approx(0.5)
    # Consumed once: the next tick sees the host's own latency again.
    nxt = seen[1].tenants["llm"].latency
    assert nxt is not None and nxt.count == 200


def test_pushed_samples_past_the_kept_ones_still_count_in_the_window() -> None:
    """Found by hunting: past MAX_PUSHED (20,000) samples in a tick the oldest were dropped from
    the window: 30,000 pushed requests read as 20,000, and the 10,000 over the SLO among the
    dropped went uncounted. They leave the samples kept for quantiles, not the count."""
    seen: list[Observation] = []

    def spy(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        seen.append(obs)
        return decide(state, obs, spec)

    d = Daemon(ToyHost(), DaemonOptions(period_s=0.01, max_ticks=1), decide_fn=spy)
    slo = d.spec.tenants["llm"].slo_s
    assert slo is not None
    for _ in range(3):
        assert d.push_latency("llm", [slo * 2] * 5_000 + [slo / 2] * 5_000)
    run(d)
    lat = seen[0].tenants["llm"].latency
    assert lat is not None and lat.count == 30_000 and lat.over_slo == 15_000.0 and len(lat.samples) == 20_000


def test_control_pause_stops_applying_and_dry_run_marks_events() -> None:
    host = ToyHost()
    d = Daemon(host, DaemonOptions(period_s=0.005, max_ticks=50))
    d.control("pause")
    run(d)
    # paused: every tick goes to the host as a dry run (it applies nothing and lifts what it holds)
    assert host.applied and all(not x.enforce for x in host.applied)
    assert d.snapshot.paused
    host2 = ToyHost()
    d2 = Daemon(host2, DaemonOptions(period_s=0.005, max_ticks=60))
    d2.control("dry-run")
    run(d2)
    assert d2.snapshot.actions and all(r == "dry_run" for _, r in d2.snapshot.actions)
    assert all(not x.enforce for x in host2.applied)
    with pytest.raises(ValueError, match="unknown control command"):
        d2.control("reboot")
    d3 = Daemon(ToyHost(), DaemonOptions(dry_run_locked=True))
    with pytest.raises(ValueError, match="started with --dry-run"):
        d3.control("enforce")
    assert d3.control("dry-run") == "dry-run"


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_one() -> None:
    host = ToyHost()
    calls: list[str] = []

    def reload() -> HostSpec:
        calls.append("x")
        if len(calls) == 1:
            raise ValueError("tailguard.toml: tenants[0](llm).slo_ms: Input should be greater than 0 (got -1)")
        return replace(host.spec, policy=replace(host.spec.policy, y_windows=7))

    d = Daemon(host, DaemonOptions(period_s=0.02, max_ticks=30), reload=reload)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, os.kill, os.getpid(), signal.SIGHUP)
        loop.call_later(0.3, os.kill, os.getpid(), signal.SIGHUP)
        return await d.run()

    asyncio.run(main())
    assert len(calls) == 2
    assert d.snapshot.reloads == {"ok": 1, "error": 1}
    assert d.spec.policy.y_windows == 7


def test_sigterm_stops_cleanly_and_sd_notify_speaks_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(0.2)
    msgs: list[str] = []

    def reader() -> None:  # systemd reads continuously; so do we (the queue holds only ~10)
        while True:
            try:
                m = server.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            msgs.append(m)
            if m == "STOPPING=1":
                return

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_s == pytest.approx(0.2)
    host = ToyHost()
    d = Daemon(host, DaemonOptions(period_s=0.3), notifier=notifier)

    async def main() -> int:
        asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)
        return await d.run()

    assert asyncio.run(main()) == 0
    th.join(5)
    server.close()
    assert d.stop_reason == "SIGTERM" and host.closed
    first_ready = next(i for i, m in enumerate(msgs) if m.startswith("READY=1"))
    assert any(m.startswith("STATUS=") for m in msgs[first_ready:])
    # A 0.3 s period with a 0.2 s watchdog: the loop pings between ticks too (every 0.1 s).
    pings = [m for m in msgs if m == "WATCHDOG=1"]
    assert len(pings) >= 6, msgs
    assert msgs[-1] == "STOPPING=1"
    assert sum(m.startswith("READY=1") for m in msgs) == 1


def test_notifier_abstract_socket_and_no_socket() -> None:
    name = f"tailguard-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        n = Notifier(address="@" + name)
        assert n.ready("up")
        assert server.recv(100) == b"READY=1\nSTATUS=up"
    finally:
        server.close()
    off = Notifier(address="")
    assert not off.enabled and not off.watchdog()
    gone = Notifier(address="/nonexistent/notify.sock")
    assert not gone.watchdog() and gone.errors_total == 1


def test_status_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "no status file" in capsys.readouterr().err
    run(Daemon(ToyHost(), DaemonOptions(host_name="toy", period_s=0.005, max_ticks=40, state_dir=str(tmp_path))))
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tailguard on toy" in out and "active throttles" in out
    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "tailguard.status/1"
    (tmp_path / "status.json").write_text("{torn")
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "not a status file" in capsys.readouterr().err


def test_status_over_loopback_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The metrics server also answers /status with the daemon's status JSON; `tailguard status
    --url` renders it; anything else is a 404 and a dead port a clear error."""
    import urllib.error
    import urllib.request

    from controller.cli import main
    from controller.exporters.prometheus import DaemonCollector, MetricsServer, make_registry
    from controller.status import status_json

    d = Daemon(ToyHost(), DaemonOptions(host_name="toy", period_s=0.005, max_ticks=40, state_dir=str(tmp_path)))
    run(d)
    server = MetricsServer(
        make_registry(DaemonCollector(lambda: d.snapshot)), "127.0.0.1", 0, status=lambda: status_json(d.snapshot)
    )
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert b"tailguard_ticks_total" in r.read()
        with urllib.request.urlopen(base + "/status", timeout=5) as r:
            assert r.headers["Content-Type"] == "application/json"
            assert json.loads(r.read())["ticks_total"] == 40
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert e.value.code == 404
        assert main(["status", "--url", base + "/status"]) == 0
        assert "tailguard on toy" in capsys.readouterr().out
        assert main(["status", "--url", base + "/metrics"]) == 1
        assert "not JSON" in capsys.readouterr().err
    finally:
        server.close()
    assert main(["status", "--url", base + "/status"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    assert main(["status", "--url", "file:///etc/passwd"]) == 1
    assert "expected an http:// URL" in capsys.readouterr().err


def test_watchdog_pings_come_from_the_loop_so_a_stalled_loop_stops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    sock_path = str(tmp_path / "n.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(0.1)
    pings: list[float] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                if server.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except TimeoutError:
                continue

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    class Stalling(ToyHost):
        async def observe(self) -> Observation:
            if len(self.observed_at) == 5:
                time.sleep(0.6)  # a blocking call stalls the whole event loop
            return await super().observe()

    d = Daemon(Stalling(), DaemonOptions(period_s=0.05, max_ticks=15), notifier=Notifier(address=sock_path))
    run(d)
    time.sleep(0.2)
    done.set()
    th.join(2)
    server.close()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 10
    assert max(gaps) >= 0.5  # systemd (WatchdogSec=0.1) would have killed this stalled process
    assert sorted(gaps)[len(gaps) // 2] < 0.1  # otherwise pings come every tick


def test_failing_apply_is_counted_and_the_loop_goes_on() -> None:
    class Failing(ToyHost):
        async def apply(self, desired: object) -> None:
            raise RuntimeError("nvidia-smi: exit 9")

    d = Daemon(Failing(), DaemonOptions(period_s=0.01, max_ticks=10))
    run(d)
    assert d.snapshot.ticks_total == 10 and d.snapshot.tick_errors_total == 0
    assert d.snapshot.actuations[("apply", "error")] >= 9


def test_a_restart_outside_tailguard_is_counted_and_exported() -> None:
    """The core's `restarted` events, per tenant, as `tailguard_tenant_restarts_total` (a deploy or
    a crash the operator may want to see beside the tails it left)."""
    from prometheus_client import generate_latest

    from controller.exporters.prometheus import DaemonCollector, make_registry

    host = ToyHost(restart_on={3: 8.0, 9: 6.0})
    d = Daemon(host, DaemonOptions(period_s=0.005, max_ticks=12))
    run(d)
    assert d.snapshot.restarts == {"llm": 2}
    text = generate_latest(make_registry(DaemonCollector(lambda: d.snapshot))).decode()
    assert 'tailguard_tenant_restarts_total{tenant="llm"} 2.0' in text
