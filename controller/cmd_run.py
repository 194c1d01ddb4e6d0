"""`tailguard run`: the daemon, on this host or on a simulated one (`--simulate`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

from controller.config_files import read_mqtt_password
from schema.jsontext import ascii_digits

if TYPE_CHECKING:
    from controller.config import Config
    from controller.daemon import Daemon
    from controller.exporters.mqtt import MqttBridge
    from controller.host import Host
    from fsm.desired import DecisionEvent
    from fsm.mig import GpuModel
    from fsm.spec import HostSpec

DEFAULT_CONFIG = "/etc/tailguard/tailguard.toml"
MIN_TRACE_BYTES = 16 << 10  # `record --max-bytes`: below this every few ticks would rotate


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"the TOML config (default {DEFAULT_CONFIG}; optional with --simulate)")
    p.add_argument("--dry-run", action="store_true", help="compute and export decisions, apply nothing")
    p.add_argument(
        "--simulate",
        nargs="?",
        const="p4d-demo",
        metavar="SCENARIO",
        help="run on the simulated host of a scenario (bundled name or .toml; default p4d-demo: the paper's"
        " host with its interference within the first ten minutes)",
    )
    p.add_argument("--sim-host", default="0", help="which host of the scenario (name or index; default 0)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    p.add_argument("--duration", type=float, help="stop after this many (simulated) seconds")
    p.add_argument("--period", type=float, help="seconds between ticks (default: config / scenario tick)")
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics and /status on this port, 1-65535 (0: off)"
    )
    p.add_argument("--metrics-addr", default=None, help="address to bind the metrics port (default 127.0.0.1)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --metrics-addr (metrics and /status are then reachable from other hosts)",
    )
    p.add_argument("--mqtt-url", help="publish to this broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--host-name", help="this host's name in metrics and MQTT topics (overrides host.name)")
    p.add_argument("--state-dir", help="status and state files here (default: config host.state_dir)")
    p.add_argument("--quiet", action="store_true", help="do not print decisions as they happen")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the control loop (the daemon), or --simulate it")
    add_common(p)
    p.set_defaults(func=main, record=None)


class UsageError(Exception):
    pass


@dataclass(slots=True)
class Setup:
    host: Host
    spec: HostSpec
    host_name: str
    period_s: float
    until_t: float | None
    state_dir: str | None
    metrics: tuple[str, int] | None
    mqtt: Any  # MqttOptions | None
    reload: Callable[[], HostSpec] | None
    simulated: bool
    record_max_bytes: int = 64 << 20
    notes: list[str] = field(default_factory=list)
    dry_run_locked: bool = False  # --dry-run: nothing switches the daemon to enforce
    locks: list[IO[str]] = field(default_factory=list)  # the state directories' locks, held while it runs


def setup_logging(level: str) -> None:
    # Under systemd (JOURNAL_STREAM set) journald adds the timestamps.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=getattr(logging, level), format=fmt, stream=sys.stderr)


def _load_config(
    path: str | None, checked: bool = False, models: Callable[[str], GpuModel | None] | None = None
) -> Config | None:
    """The config; `checked`: also the files it names on this host (a real host's `run`, and
    every SIGHUP reload), with the warnings logged; `models`: the drivers' MIG tables, by which
    the MIG homes are judged where they were read (the driver wins over the built-in table)."""
    from controller.config import load_checked, load_config

    if not path:
        return None
    if not checked:
        return load_config(path)
    c = load_checked(path, models)
    for w in c.warnings:
        logging.getLogger("tailguard.config").warning("%s: %s", path, w)
    return c.config


def _overridden(cfg: Config, args: argparse.Namespace) -> Config:
    """The config with the command line's overrides (--dry-run, --host-name): at start and on
    every reload alike."""
    host: dict[str, str] = {}
    if args.dry_run:
        host["mode"] = "dry-run"
    if args.host_name:
        host["name"] = args.host_name
    return cfg.model_copy(update={"host": cfg.host.model_copy(update=host)}) if host else cfg


def _lock_dirs(dirs: list[str]) -> list[IO[str]]:
    """Each directory's lock (controller/statelock.py); UsageError when another daemon holds one."""
    from controller.statelock import StateDirBusy, lock_state_dir

    held: list[IO[str]] = []
    for d in dict.fromkeys(dirs):
        try:
            fh = lock_state_dir(d)
        except StateDirBusy as e:
            for h in held:
                h.close()
            raise UsageError(str(e)) from None
        if fh is not None:
            held.append(fh)
    return held


def check_options(args: argparse.Namespace) -> None:
    """Command-line values that would fail later (or misapply): UsageError naming the option."""
    from controller.config import check_name, mqtt_url_problem
    from controller.listen import is_loopback

    if args.speed <= 0 or args.speed != args.speed or args.speed == float("inf"):
        raise UsageError("--speed must be positive (simulated seconds per wall second)")
    if args.duration is not None and not 0 < args.duration < float("inf"):
        raise UsageError("--duration must be a positive number of seconds")
    if args.period is not None and not 0.01 <= args.period <= 60:
        raise UsageError("--period must be between 0.01 and 60 seconds")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port {args.metrics_port}: must be 1-65535, or 0 for no metrics port")
    if args.metrics_addr is not None:
        addr = args.metrics_addr.strip("[]")
        if not addr:
            raise UsageError("--metrics-addr must not be empty")
        if not is_loopback(addr) and not getattr(args, "allow_remote", False):
            raise UsageError(
                f"--metrics-addr {args.metrics_addr}: not a loopback address; metrics and /status (decision"
                " evidence) would be reachable from other hosts: add --allow-remote to mean it"
            )
    if args.mqtt_url is not None and (why := mqtt_url_problem(args.mqtt_url)) is not None:
        raise UsageError(f"--mqtt-url {args.mqtt_url!r}: {why}")
    if args.host_name is not None:
        try:
            check_name(args.host_name)
        except ValueError as e:
            # It becomes an MQTT topic level and a metric label: no '/', '+', '#' or spaces.
            raise UsageError(f"--host-name {args.host_name!r}: {e}") from None
    if getattr(args, "record", None) is not None:
        from schema.outputs import check_output_file

        if args.max_bytes < MIN_TRACE_BYTES:
            raise UsageError(
                f"--max-bytes {args.max_bytes}: must be at least {MIN_TRACE_BYTES} (a header and a few ticks)"
            )
        why = check_output_file(args.record, mkdir=True)
        if why:
            raise UsageError(f"--out {args.record}: {why}")


def build(args: argparse.Namespace) -> Setup:
    """Everything `run` / `record` need, from the command line; ConfigError / ScenarioError /
    UsageError name what was wrong."""
    from controller.exporters.mqtt import MqttOptions

    check_options(args)
    path = args.config if args.config or args.simulate else DEFAULT_CONFIG
    mig = None
    if args.simulate:
        cfg = _load_config(path)
    else:  # the drivers' MIG tables first: the config's MIG homes are judged by them (the driver wins)
        from controller.mig_tables import read_for_config

        mig = read_for_config(_load_config(path))
        cfg = _load_config(path, checked=True, models=mig.driver_model)
    if args.simulate:
        from replay.scenario import load_scenario
        from replay.simulator import SimulatedHost

        scenario = load_scenario(args.simulate)
        which: str | int = int(args.sim_host) if ascii_digits(args.sim_host) else args.sim_host
        try:
            host: Any = SimulatedHost(scenario, host=which, speed=args.speed)
        except (ValueError, IndexError):
            names = ", ".join(h.name for h in scenario.hosts)
            raise UsageError(f"--sim-host {args.sim_host!r}: the scenario has hosts {names}") from None
        spec = host.spec
        if args.dry_run:
            spec = replace(spec, policy=replace(spec.policy, enforce=False))
            host.spec = spec
        tick = scenario.meta.tick_s
        period = (args.period or tick) / args.speed
        until = args.duration if args.duration is not None else scenario.meta.duration_s
        name = args.host_name or f"sim-{host.name}"
        reload_fn = None
        simulated = True
        state_dir = args.state_dir
        locks = _lock_dirs([state_dir] if state_dir else [])
    else:
        assert cfg is not None
        from controller.linux_host import LinuxHost
        from controller.topology import load_topology

        cfg = _overridden(cfg, args)
        # One daemon per state directory (controller/statelock.py): the one it writes status and
        # state to, and the journal's (config's), unless hands off (--dry-run only reads it).
        state_dir = args.state_dir or cfg.host.state_dir
        locks = _lock_dirs([state_dir, *([] if args.dry_run else [cfg.host.state_dir])])
        try:
            topo = load_topology(cfg.topology.source, cfg.signals.sys_root, cfg.topology.topo_matrix_file)
        except (OSError, RuntimeError, ValueError) as e:
            raise UsageError(f"topology ({cfg.topology.source}): {e}") from None
        host = LinuxHost(cfg, topo, mig=mig, dry_run=args.dry_run)
        spec = host.spec
        period = args.period or cfg.host.sample_period_s
        # The host clock is wall-clock time: --duration counts from now.
        until = None if args.duration is None else host.now() + args.duration
        name = cfg.host.name
        cfg_path = args.config or DEFAULT_CONFIG
        linux_host = host
        from controller.config import ConfigError
        from controller.config_reload import restart_only_changes

        def reload_fn() -> HostSpec:
            # validated in full before anything changes, MIG homes by the tables in force; the
            # command line's overrides kept; what takes a restart refused (config_reload)
            new = _load_config(cfg_path, checked=True, models=linux_host.mig.driver_model)
            assert new is not None
            new = _overridden(new, args)
            refused = restart_only_changes(linux_host.cfg, new)
            if refused:
                raise ConfigError(str(cfg_path), refused)
            return linux_host.reload(new)

        simulated = False
    # Exporters: the command line wins over the config.
    metrics: tuple[str, int] | None = None
    addr = args.metrics_addr or "127.0.0.1"
    if args.metrics_port is not None:
        metrics = (addr, args.metrics_port) if args.metrics_port > 0 else None
    elif cfg is not None and cfg.exporters.prometheus.enabled and not simulated:
        from controller.exporters.prometheus import parse_listen

        metrics = parse_listen(cfg.exporters.prometheus.listen)
    mqtt: MqttOptions | None = None
    mc = cfg.exporters.mqtt if cfg is not None else None
    if args.mqtt_url or (mc is not None and mc.enabled and not simulated):
        password = None
        if mc is not None and mc.password_file:
            try:
                password = read_mqtt_password(mc.password_file)
            except OSError as e:
                raise UsageError(f"exporters.mqtt.password_file {mc.password_file}: {e.strerror or e}") from None
        mqtt = MqttOptions(
            url=args.mqtt_url or (mc.url if mc else ""),
            host_name=name,
            queue_max=mc.queue_max if mc else 1000,
            username=mc.username if mc else None,
            password=password,
            tls=mc.tls if mc else False,
            tls_ca=mc.tls_ca if mc else None,
            latency_ingest=mc.latency_ingest if mc else True,
            control_topic=mc.control_topic if mc else False,
        )
    return Setup(host, spec, name, period, until, state_dir, metrics, mqtt, reload_fn, simulated,
                 dry_run_locked=args.dry_run, locks=locks)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from controller.config import ConfigError

    setup_logging(args.log_level)
    try:
        from replay.scenario import ScenarioError
    except ImportError:  # replay not installed: --simulate unavailable
        ScenarioError = ConfigError  # type: ignore[misc,assignment]
    try:
        s = build(args)
    except (ConfigError, ScenarioError, UsageError, ValueError) as e:
        print(f"tailguard {args.command}: {e}", file=sys.stderr)
        return 2
    return asyncio.run(serve(s, args))


async def serve(s: Setup, args: argparse.Namespace) -> int:
    from controller.daemon import Daemon, DaemonOptions
    from controller.exporters.mqtt import MqttBridge
    from controller.exporters.prometheus import DaemonCollector, MetricsServer, make_registry
    from controller.mig_probe import DriverMismatch
    from controller.sdnotify import Notifier
    from controller.status import status_json

    start = getattr(s.host, "start", None)
    start_error = ""
    if callable(start):
        try:
            # the drivers' MIG tables, then crash recovery from the journal (LinuxHost: a failed
            # recovery does not raise, it runs degraded)
            await start()
        except DriverMismatch as e:  # a config error, as in build(): exit 2 (systemd does not restart)
            print(f"tailguard {args.command}: {args.config or DEFAULT_CONFIG}: {e}", file=sys.stderr)
            await s.host.close()
            return 2
        except Exception as e:  # exiting here would make systemd restart us forever: run on, degraded
            start_error = f"host start raised {type(e).__name__}: {e}"
            logging.getLogger("tailguard").exception("%s; running degraded", start_error)
        s.spec = replace(s.spec, mig_tables=s.host.spec.mig_tables)  # a trace records the tables in force
    writer = None
    if getattr(args, "record", None):
        from replay.trace import TraceWriter

        try:
            writer = TraceWriter(args.record, s.host_name, s.spec, max_bytes=args.max_bytes)
        except OSError as e:
            print(f"tailguard {args.command}: --out {args.record}: {e.strerror or e}", file=sys.stderr)
            return 2
    printer = None if args.quiet else _print_events
    on_obs = writer.write if writer is not None else None
    daemon = Daemon(
        s.host,
        DaemonOptions(
            host_name=s.host_name,
            period_s=s.period_s,
            state_dir=s.state_dir,
            # a simulated host's clock runs at --speed: stop at its time; a real one: after the wall seconds
            until_t=s.until_t if s.simulated else None,
            stop_after_s=None if s.simulated or s.until_t is None else max(0.0, s.until_t - s.host.now()),
            dry_run_locked=s.dry_run_locked,
        ),
        spec=s.spec,
        notifier=Notifier(),
        reload=s.reload,
        on_events=printer,
        on_observation=on_obs,
    )
    if start_error:
        daemon.degraded.set("start", start_error, "start")
    bridge: MqttBridge | None = None
    if s.mqtt is not None:
        bridge = MqttBridge(
            s.mqtt,
            on_latency=daemon.push_latency,
            on_control=daemon.control,
            on_counts=daemon.push_counts,
            on_history=daemon.push_history,
        )
        daemon.exporters.append(bridge)
        bridge.start()
    server = None
    if s.metrics is not None:
        collector = DaemonCollector(lambda: daemon.snapshot, bridge.metrics if bridge is not None else None)
        try:
            server = MetricsServer(
                make_registry(collector),
                s.metrics[0],
                s.metrics[1],
                status=lambda: status_json(daemon.snapshot, daemon.opts.status_every_s),
            )
        except OSError as e:
            print(
                f"tailguard {args.command}: metrics on {s.metrics[0]}:{s.metrics[1]}: {e.strerror or e}",
                file=sys.stderr,
            )
            if bridge is not None:
                await bridge.stop(0)
            return 2
        logging.getLogger("tailguard").info(
            "metrics on http://%s:%d/metrics, status on /status", server.addr, server.port
        )
    t0 = time.monotonic()
    try:
        rc = await daemon.run()
    finally:
        if bridge is not None:
            await bridge.stop()
        if server is not None:
            server.close()
        if writer is not None:
            writer.close()
    if s.simulated or not args.quiet:
        print(summary(daemon, s, time.monotonic() - t0, bridge))
    return rc


def _print_events(events: tuple[DecisionEvent, ...]) -> None:
    for e in events:
        if e.kind == "hold":
            continue
        lever = f" [{e.lever}]" if e.lever else ""
        dry = "" if e.applied else " (dry-run)"
        print(
            f"t={e.t:8.0f}s {e.tenant:<12} {e.kind:<9} {e.level_from}->{e.level_to}{lever}{dry}: {e.reason}", flush=True
        )


def summary(daemon: Daemon, s: Setup, wall_s: float, bridge: MqttBridge | None) -> str:
    snap = daemon.snapshot
    lines = [
        "",
        f"== tailguard run summary ({'simulated ' + s.host_name if s.simulated else s.host_name}) ==",
        f"stopped: {daemon.stop_reason or 'loop ended'}; {snap.ticks_total} ticks in {wall_s:.1f} s wall, "
        f"host clock t={snap.t:.0f} s; {snap.overruns_total} overruns; {snap.tick_errors_total} failed ticks",
        f"decision events: {snap.events_total}; MIG reconfigurations: {snap.reconfigs_total}",
    ]
    if snap.actions:
        acts = ", ".join(f"{k}/{r}={n}" for (k, r), n in sorted(snap.actions.items()))
        lines.append(f"actions: {acts}")
    for name, t in sorted(snap.tenants.items()):
        if t.slo_s is None:
            continue
        frac = t.violating_windows_total / t.windows_total if t.windows_total else 0.0
        lines.append(
            f"  {name}: SLO {t.slo_s * 1000:.1f} ms at q{t.quantile:g}; {t.violating_windows_total}/{t.windows_total} "
            f"windows violated ({frac:.1%}); ends at level {t.level}"
        )
    if bridge is not None:
        st = bridge.stats
        lines.append(
            f"mqtt: {st.published_total} published, {st.dropped_total} dropped, "
            f"{sum(st.malformed_total.values())} malformed in, {st.connects_total} connects"
        )
    return "\n".join(lines)
