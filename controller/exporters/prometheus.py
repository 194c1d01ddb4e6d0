"""Prometheus exposition: a custom collector that reads the daemon's latest Snapshot at scrape time.

Base units (seconds, bytes per second), counters end in `_total` (Prometheus naming practice,
https://prometheus.io/docs/practices/naming/). Each daemon gets its own CollectorRegistry, so
tests can run several without clashing on the global one. The HTTP server binds 127.0.0.1 by
default: the metrics say which tenant is throttled and why, not something to publish to the LAN.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controller.exporters.snapshot import LEVEL_NUMBER, Snapshot

log = logging.getLogger("tailguard.metrics")


def _version() -> str:
    try:
        return metadata.version("tailguard")
    except metadata.PackageNotFoundError:
        return "unknown"


class DaemonCollector(Collector):
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        extra: Callable[[], Iterator[Metric]] | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._extra = extra
        self._mono = mono
        self._version = _version()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: the label sets depend on the config

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield from self._daemon(s)
        yield from self._tenants(s)
        yield from self._actions(s)
        yield from self._samplers(s)
        yield from self._degraded(s)
        if self._extra is not None:
            yield from self._extra()

    def _daemon(self, s: Snapshot) -> Iterator[Metric]:
        info = InfoMetricFamily("tailguard_build", "tailguard version and Python runtime.")
        info.add_metric([], {"version": self._version, "python": platform.python_version(), "host": s.host})
        yield info
        yield GaugeMetricFamily("tailguard_start_time_seconds", "Unix time the daemon started.", s.started_wall)
        yield GaugeMetricFamily("tailguard_last_tick_timestamp_seconds", "Unix time of the last finished tick.", s.wall)
        yield GaugeMetricFamily("tailguard_sample_period_seconds", "Configured time between ticks.", s.period_s)
        yield CounterMetricFamily("tailguard_ticks", "Ticks run.", s.ticks_total)
        yield CounterMetricFamily(
            "tailguard_tick_overruns", "Ticks that ran past the start of the next one.", s.overruns_total
        )
        yield CounterMetricFamily(
            "tailguard_tick_errors", "Ticks whose observation failed or timed out.", s.tick_errors_total
        )
        yield CounterMetricFamily(
            "tailguard_apply_skipped",
            "Ticks whose desired state was not handed to the reconciler (the previous apply still ran).",
            s.apply_busy_total,
        )
        h = HistogramMetricFamily("tailguard_tick_duration_seconds", "Time one tick took (observe to export).")
        h.add_metric([], [(b, float(c)) for b, c in s.tick_seconds] or [("+Inf", 0.0)], s.tick_seconds_sum)
        yield h
        yield GaugeMetricFamily(
            "tailguard_ready", "1 once the first good tick ran (systemd READY=1 sent).", float(s.ready)
        )
        yield GaugeMetricFamily(
            "tailguard_enforcing", "1 when decisions are applied, 0 in dry-run.", float(s.enforcing)
        )
        yield GaugeMetricFamily("tailguard_paused", "1 when paused over the control topic.", float(s.paused))
        yield GaugeMetricFamily(
            "tailguard_in_flight_operations", "Background operations (MIG changes, moves) under way.", len(s.in_flight)
        )
        yield GaugeMetricFamily(
            "tailguard_unavailable_sources", "Signal sources unavailable in the last tick.", len(s.unavailable)
        )
        yield CounterMetricFamily("tailguard_decision_events", "Decision events emitted.", s.events_total)
        yield CounterMetricFamily("tailguard_mig_reconfigurations", "MIG layout changes decided.", s.reconfigs_total)
        yield CounterMetricFamily(
            "tailguard_watchdog_pings", "systemd WATCHDOG=1 notifications sent.", s.watchdog_pings_total
        )
        mig = GaugeMetricFamily(
            "tailguard_mig_profile_table_differences",
            "Ways the GPU driver's MIG profile table differs from the built-in one (source=driver: the driver's"
            " table is in force).",
            labels=["gpu", "model", "source", "driver"],
        )
        for g, t in sorted(s.mig_tables.items()):
            mig.add_metric([g, t.model, t.source, t.driver], t.differences)
        yield mig
        rl = CounterMetricFamily("tailguard_config_reloads", "SIGHUP config reloads by result.", labels=["result"])
        for result in ("ok", "error"):
            rl.add_metric([result], s.reloads.get(result, 0))
        yield rl
        yield GaugeMetricFamily(
            "tailguard_config_last_reload_successful",
            "0 while the last SIGHUP reload was refused (a bad file, or a key that takes a restart): the daemon runs"
            " the config it had, not the file on disk (tailguard status says why).",
            value=0.0 if s.last_reload_error else 1.0,
        )
        bad = CounterMetricFamily(
            "tailguard_bad_input", "Observation values the core rejected (NaN, negative, ...).", labels=["reason"]
        )
        for reason, n in sorted(s.bad_input.items()):
            bad.add_metric([reason], n)
        yield bad

    def _tenants(self, s: Snapshot) -> Iterator[Metric]:
        lat = GaugeMetricFamily(
            "tailguard_tenant_latency_seconds",
            "Latency quantile of the tenant's last window.",
            labels=["tenant", "q"],  # not "quantile": reserved for summaries
        )
        slo = GaugeMetricFamily("tailguard_tenant_slo_seconds", "The tenant's latency SLO.", labels=["tenant"])
        win = CounterMetricFamily(
            "tailguard_tenant_windows", "Windows with enough requests to judge the SLO.", labels=["tenant"]
        )
        viol = CounterMetricFamily(
            "tailguard_tenant_slo_violating_windows", "Windows whose quantile exceeded the SLO.", labels=["tenant"]
        )
        level = GaugeMetricFamily(
            "tailguard_tenant_isolation_level",
            "Isolation level: 0 steady, 1 guarded, 2 placed, 3 resized.",
            labels=["tenant"],
        )
        thr = GaugeMetricFamily(
            "tailguard_tenant_throttled", "1 while tailguard caps the tenant's I/O.", labels=["tenant"]
        )
        for name, t in sorted(s.tenants.items()):
            for q, v in (("0.5", t.p50_s), ("0.99", t.p99_s), ("0.999", t.p999_s)):
                if v is not None:
                    lat.add_metric([name, q], v)
            if t.slo_s is not None:
                slo.add_metric([name], t.slo_s)
                win.add_metric([name], t.windows_total)
                viol.add_metric([name], t.violating_windows_total)
            level.add_metric([name], LEVEL_NUMBER.get(t.level, 0))
            if t.role != "sensitive":
                thr.add_metric([name], float(t.throttled))
        yield from (lat, slo, win, viol, level, thr)
        caps = GaugeMetricFamily(
            "tailguard_throttle_bytes_per_second",
            "Active I/O caps tailguard set, per tenant, device and direction.",
            labels=["tenant", "device", "direction", "victim"],
        )
        for th in s.throttles:
            for direction, v in (("read", th.read_bps), ("write", th.write_bps)):
                if v is not None:
                    caps.add_metric([th.tenant, th.device, direction, th.victim], v)
        yield caps
        yield GaugeMetricFamily("tailguard_active_throttles", "Number of active I/O caps.", len(s.throttles))

    def _actions(self, s: Snapshot) -> Iterator[Metric]:
        act = CounterMetricFamily(
            "tailguard_actions",
            "Decisions by kind (guard, place, resize, release, ...) and result (decided, dry_run, failed).",
            labels=["kind", "result"],
        )
        for (kind, result), n in sorted(s.actions.items()):
            act.add_metric([kind, result], n)
        yield act
        ops = CounterMetricFamily(
            "tailguard_actuations",
            "Finished reconciler operations by target kind (tenant, gpu, throttle) and result.",
            labels=["target", "result"],
        )
        for (target, result), n in sorted(s.actuations.items()):
            ops.add_metric([target, result], n)
        yield ops
        restarts = CounterMetricFamily(
            "tailguard_tenant_restarts",
            "Restarts of a sensitive tenant that tailguard did not make (a deploy, a crash: its latency"
            " histogram's counters went back to zero); its backlog is not judged as a tail.",
            labels=["tenant"],
        )
        for tenant, n in sorted(s.restarts.items()):
            restarts.add_metric([tenant], n)
        yield restarts

    def _samplers(self, s: Snapshot) -> Iterator[Metric]:
        now = self._mono()
        errors = CounterMetricFamily("tailguard_sampler_errors", "Failed samples per sampler.", labels=["sampler"])
        timeouts = CounterMetricFamily(
            "tailguard_sampler_timeouts", "Samples that hit their timeout.", labels=["sampler"]
        )
        samples = CounterMetricFamily("tailguard_sampler_samples", "Samples attempted.", labels=["sampler"])
        age = GaugeMetricFamily(
            "tailguard_sampler_data_age_seconds", "Age of the sampler's last good value.", labels=["sampler"]
        )
        up = GaugeMetricFamily("tailguard_sampler_up", "1 when the last sample succeeded.", labels=["sampler"])
        dur = GaugeMetricFamily(
            "tailguard_sampler_duration_seconds", "How long the last sample took.", labels=["sampler"]
        )
        for v in s.samplers:
            errors.add_metric([v.name], v.errors_total)
            timeouts.add_metric([v.name], v.timeouts_total)
            samples.add_metric([v.name], v.samples_total)
            if v.last_success_mono is not None:
                age.add_metric([v.name], max(0.0, now - v.last_success_mono))
            up.add_metric([v.name], float(v.up and v.last_success_mono is not None))
            dur.add_metric([v.name], v.last_duration_s)
        yield from (errors, timeouts, samples, age, up, dur)

    def _degraded(self, s: Snapshot) -> Iterator[Metric]:
        deg = GaugeMetricFamily(
            "tailguard_degraded",
            "1 per degraded condition in force (recovery, journal, source:<name>, ...): the daemon runs on without it.",
            labels=["condition", "group"],
        )
        since = GaugeMetricFamily(
            "tailguard_degraded_since_seconds", "Unix time each degraded condition started.", labels=["condition"]
        )
        for c in s.degraded:
            deg.add_metric([c.name, c.group], 1.0)
            since.add_metric([c.name], c.since)
        yield from (deg, since)
        yield GaugeMetricFamily(
            "tailguard_degraded_conditions", "Number of degraded conditions in force.", len(s.degraded)
        )
        up = GaugeMetricFamily(
            "tailguard_source_available",
            "1 when the signal source answered in the last tick, 0 when unavailable.",
            labels=["source"],
        )
        for name, ok in sorted(s.sources.items()):
            up.add_metric([name], float(ok))
        yield up
        yield GaugeMetricFamily(
            "tailguard_running",
            "1 while the loop runs, 0 in the last scrape after a clean stop.",
            float(s.state != "stopped"),
        )
        j = s.journal
        if j is not None:
            yield CounterMetricFamily("tailguard_journal_appends", "Journal records written (fsync'd).",
                                      j["appends_total"])  # fmt: skip
            errs = CounterMetricFamily(
                "tailguard_journal_write_errors",
                "Journal appends that failed, by errno (ENOSPC, EROFS, EACCES, ...).",
                labels=["errno"],
            )
            for code, n in sorted(j["errors_total"].items()):
                errs.add_metric([code], n)
            yield errs
            yield CounterMetricFamily(
                "tailguard_journal_torn_repairs",
                "Torn journal lines cut off before the next append.",
                j["torn_repairs_total"],
            )
            yield CounterMetricFamily(
                "tailguard_journal_reopens",
                "Times the journal file or state dir was found deleted or replaced.",
                j["reopens_total"],
            )
            yield CounterMetricFamily(
                "tailguard_journal_skipped_lines",
                "Journal lines recovery could not decode.",
                j["skipped_lines_total"],
            )
            yield GaugeMetricFamily(
                "tailguard_journal_failing", "1 while journal writes fail (no new cap is applied).", float(j["failing"])
            )
        h = HistogramMetricFamily(
            "tailguard_move_outage_seconds",
            "Measured outage of a tenant: a move's (old copy stopped to new copy ready) or a resize's.",
            labels=["tenant", "kind"],
        )
        for (tenant, kind), (buckets, total, _n) in sorted(s.outage_seconds.items()):
            h.add_metric([tenant, kind], [(b, float(c)) for b, c in buckets], total)
        yield h


def make_registry(collector: Collector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


REQUEST_TIMEOUT_S = 10.0


class MetricsServer:
    """A small HTTP server on its own thread: `/metrics` (the registry, rendered at scrape time)
    and, when given, `/status` (the daemon's status JSON, what `tailguard status --url` reads).
    Stoppable, because tests start many."""

    def __init__(
        self,
        registry: CollectorRegistry,
        addr: str = "127.0.0.1",
        port: int = 9433,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        handler = _handler(registry, status)
        server_cls = _V6Server if ":" in addr else _Server
        self.httpd = server_cls((addr, port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="tailguard-http", daemon=True)
        self.thread.start()
        self.port = int(self.httpd.server_address[1])
        self.addr = addr

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (or timed out) is no error worth a traceback on stderr, which is
        where socketserver put one for each; anything else goes to the daemon's log."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        log.warning("metrics server: a request from %s failed", client_address, exc_info=True)


class _V6Server(_Server):
    address_family = socket.AF_INET6


def _handler(registry: CollectorRegistry, status: Callable[[], dict[str, Any]] | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # A request not sent whole within this many seconds is dropped: each half-sent one held a
        # thread for good (200 of them, 200 threads, after 5 s and still there).
        timeout = REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/status" and status is not None:
                body = json.dumps(status(), sort_keys=True).encode()
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"tailguard: /metrics, /status\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            return

    return Handler
