"""The TOML configuration, validated by pydantic. Unknown keys are errors; every problem is
reported with the file, the dotted key path and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actuators.launcher import TEMPLATE_NAME, UNIT_NAME
from actuators.paths import PathError, check_rel
from fsm.mig import GpuModel, Slot, checked_ladder
from fsm.observation import InstanceRef
from fsm.outage import DEFAULT_HANDOVER_GAP_S, DEFAULT_READINESS_TIMEOUT_S, DEFAULT_RECONFIG_S, DEFAULT_RELAUNCH_S
from fsm.spec import Policy, Role, TenantSpec
from fsm.topology import Tier
from schema.files import read_small_text
from schema.names import Name, check_name  # noqa: F401 (check_name: re-exported, the daemon's name rule)
from schema.problems import KeyProblem, KeyProblems, loads_toml, problems_of


def url_problem(v: str, schemes: tuple[str, ...], path: bool = True) -> str | None:
    """Why `v` is not a URL the daemon can connect to (None: it is): one of `schemes`, a host the
    resolver takes (an IP, or a name whose labels IDNA can encode), a port in range, ASCII beyond
    the host (percent-encoded), and no path unless `path`. What urllib and the MQTT client would
    refuse at connect time, on every tick or reconnect, is refused here instead."""
    want = " or ".join(f"{s}://" for s in schemes)
    form = f"expected {want}HOST[:PORT]" + ("[/PATH]" if path else "")
    try:
        u = urlsplit(v)
        port = u.port  # ValueError for a port out of range or not a number
    except ValueError as e:
        return f"not a URL ({e})"
    host = u.hostname
    ctl = next((i for i, c in enumerate(v) if not c.isprintable() and not c.isspace()), None)
    if ctl is not None:  # NUL, BEL, a bidi mark: urllib refuses them at connect time
        return f"a control or invisible character ({v[ctl]!r}) at position {ctl}"
    if u.scheme not in schemes or not host or any(c.isspace() for c in v):
        return form
    if port == 0:
        return "port 0 is not a port to connect to"
    try:
        host.encode("idna")
    except UnicodeError:
        return f"host {host!r} is not a host name (labels of 1-63 characters)"
    if not v.replace(u.netloc, "", 1).isascii():
        return "only ASCII after the host: percent-encode other characters"
    if not path and (u.path not in ("", "/") or u.query or u.fragment):
        return form + ", without a path"
    return None


def mqtt_url_problem(v: str) -> str | None:
    return url_problem(v, ("mqtt", "mqtts"), path=False)


def _check_abs(v: str) -> str:
    # The daemon runs with its own working directory (systemd: /): a relative path would name
    # another file there than where check-config was run.
    if not v.startswith("/"):
        raise ValueError("must be an absolute path (starting with '/')")
    if "\0" in v or "\n" in v:
        raise ValueError("must not contain NUL or newline")
    _check_lengths(v)
    return v


def _check_lengths(v: str) -> None:
    # Linux's PATH_MAX and NAME_MAX: a longer path cannot be opened, only fail with ENAMETOOLONG.
    if len(v.encode("utf-8", "surrogateescape")) > 4095:
        raise ValueError(f"is {len(v)} characters long: a path has at most 4095 bytes")
    if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in v.split("/")):
        raise ValueError("has a component longer than 255 bytes (the longest file name Linux allows)")


AbsPath = Annotated[str, AfterValidator(_check_abs)]

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")  # prometheus.io/docs/concepts/data_model/
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # the same page; names starting with __ are reserved
_DEVICE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._+-]{0,63}|\d{1,10}:\d{1,10})$")


def _check_device(v: str) -> str:
    # The topology knows block devices and NICs by name and MAJ:MIN; a path would match no node.
    if not _DEVICE.match(v):
        hint = f" (e.g. {PurePosixPath(v).name!r})" if "/" in v and PurePosixPath(v).name else ""
        raise ValueError(f"must be a plain device name like nvme0n1{hint} or MAJ:MIN like 259:0, not a path")
    return v


Device = Annotated[str, AfterValidator(_check_device)]


class Strict(BaseModel):
    # strict: "yes", 0 or "off" are not booleans and "2" is not a number (TOML has real ones);
    # no inf/nan anywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def check_cgroup_rel(path: str) -> str:
    """A cgroup path relative to the configured root: no '..', no absolute path, no control
    character: the actuators' own rule (actuators/paths.py), so a path they would refuse at the
    first cap is refused here."""
    if not path or len(path) > 1024:
        raise ValueError("must be a non-empty relative path of at most 1024 characters")
    try:
        p = check_rel(path, "cgroup path")
    except PathError as e:  # its message names the path, which the problem shows beside it
        raise ValueError(str(e).removeprefix(f"cgroup path {path!r}: ")) from None
    _check_lengths(path)
    return str(p)


class HostConfig(Strict):
    name: Name = "localhost"
    sample_period_s: float = Field(2.0, gt=0.05, le=60)
    mode: Literal["enforce", "dry-run"] = "dry-run"
    state_dir: AbsPath = "/var/lib/tailguard"
    cgroup_root: AbsPath = "/sys/fs/cgroup"
    cgroup_version: Literal["auto", "v1", "v2"] = "auto"
    lift_throttles_on_exit: bool = True
    # "kubernetes": the DaemonSet (read-only root, no host systemd): observe and guards only
    # (controller/platform.py turns the placement, MIG and MPS levers off, with a note).
    platform: Literal["host", "kubernetes"] = "host"


class LatencySource(Strict):
    kind: Literal["prometheus", "jsonl", "mqtt"]
    url: str | None = None  # prometheus
    metric: str = "vllm:time_to_first_token_seconds"  # histogram base name
    labels: dict[str, str] = {}  # keep only series with these labels
    path: AbsPath | None = None  # jsonl
    field: str = "latency_s"  # jsonl field holding seconds
    # jsonl: a field holding each request's time in Unix seconds; with it, the lines already in the
    # file when tailguard starts are the tenant's history (TenantSample.served_total, uptime_s)
    time_field: str | None = None
    timeout_s: float = Field(1.0, gt=0, le=30)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and (why := url_problem(v, ("http", "https"))) is not None:
            raise ValueError(why)
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        # Prometheus' metric name syntax: an empty or odd name would match no series, silently
        if not _METRIC_NAME.match(v):
            raise ValueError("not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        # Prometheus' label name syntax; `le` is the histogram's own bucket label: filtering on it
        # keeps one bucket, no +Inf and no count, and every request then reads as inside it
        for name, value in v.items():
            if not _LABEL_NAME.match(name):
                raise ValueError(f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name == "le" or name.startswith("__"):
                raise ValueError(f"{name!r} is the histogram's own or a reserved label, not one to select series by")
            if "\0" in value or "\n" in value:
                raise ValueError(f"label {name}: its value must not contain NUL or newline")
        return v

    @field_validator("field", "time_field")
    @classmethod
    def _field(cls, v: str | None) -> str | None:
        if v is not None and (not v or len(v) > 255 or not v.isprintable()):
            raise ValueError("expected a JSON field name: 1-255 printable characters")
        return v

    @model_validator(mode="after")
    def _needs(self) -> LatencySource:
        if self.kind == "prometheus" and not self.url:
            raise KeyProblem("url", "kind 'prometheus' needs url")
        if self.kind == "jsonl" and not self.path:
            raise KeyProblem("path", "kind 'jsonl' needs path")
        if self.time_field is not None and self.kind != "jsonl":
            raise KeyProblem("time_field", f"is read from a JSON-lines file: kind 'jsonl', not {self.kind!r}")
        if self.time_field is not None and self.time_field == self.field:
            raise KeyProblem("time_field", f"{self.time_field!r} is also field, the latency's")
        return self


class Launcher(Strict):
    kind: Literal["systemd", "command"]
    unit: str | None = None
    command: list[str] | None = None  # argv template; {uuid} {instance} {tenant} are substituted
    # restart: stop, relaunch on the target; warm: start a copy there, wait until it is ready, stop the old
    handover: Literal["restart", "warm"] = "restart"
    stop_command: list[str] | None = None  # warm, kind command: argv template that stops one copy
    ready_command: list[str] | None = None  # warm: argv template, exit 0 once that copy serves
    readiness_timeout_s: float = Field(DEFAULT_READINESS_TIMEOUT_S, gt=0, le=3600)

    @model_validator(mode="after")
    def _needs(self) -> Launcher:
        warm = self.handover == "warm"
        if self.kind == "systemd" and (not self.unit or not UNIT_NAME.match(self.unit)):
            raise KeyProblem(
                "unit",
                "kind 'systemd' needs unit, a name ending in .service: letters, digits and ':_.@-', at most 200"
                " before .service",
            )
        if self.kind == "systemd" and warm and not TEMPLATE_NAME.match(self.unit or ""):
            raise KeyProblem(
                "unit",
                "handover 'warm' with kind 'systemd' needs unit, a template NAME@.service (at most 150 before @)",
            )
        if self.kind == "command" and not self.command:
            raise KeyProblem("command", "kind 'command' needs command, a non-empty list of arguments")
        if self.kind == "command" and warm and not self.stop_command:
            raise KeyProblem(
                "stop_command", "handover 'warm' with kind 'command' needs stop_command, a non-empty list of arguments"
            )
        if self.stop_command is not None and (self.kind != "command" or not warm):
            raise KeyProblem("stop_command", "stop_command is for kind 'command' with handover 'warm'")
        if self.ready_command is not None and not warm:
            raise KeyProblem("ready_command", "ready_command is for handover 'warm'")
        for key in ("command", "stop_command", "ready_command"):
            argv = getattr(self, key)
            if argv is not None and (not argv or any(not a or "\0" in a for a in argv)):
                raise KeyProblem(key, f"{key} must be a non-empty list of non-empty arguments without NUL")
        if self.kind == "systemd" and not warm and (self.unit or "").endswith("@.service"):
            raise KeyProblem(
                "unit",
                f"{self.unit} is a template, which systemd cannot restart: name an instance (NAME@X.service),"
                " or set handover = 'warm'",
            )
        return self


class TenantConfig(Strict):
    name: Name
    role: Annotated[Role, Field(strict=False)]  # the TOML string names the enum member
    cgroup: str | None = None
    gpu: Name | None = None
    instance: str | None = None  # GPU/PROFILE@START, e.g. gpu0/3g.20gb@4
    devices: list[Device] = []
    slo_ms: float | None = Field(None, ge=0.001)  # at least 1 us: a subnormal one became an SLO of 0 s
    quantile: float = Field(0.99, gt=0, lt=1)
    latency: LatencySource | None = None
    launcher: Launcher | None = None
    mps: bool = False
    # What a move costs this tenant (fsm.outage computes each lever's outage from these and the
    # launcher's hand-over, as the simulator charges it); defaults: fsm.outage's.
    relaunch_s: float = Field(DEFAULT_RELAUNCH_S, ge=0, le=3600)  # stop/start until it serves again
    reconfig_s: float = Field(DEFAULT_RECONFIG_S, ge=0, le=3600)  # one MIG reconfiguration of its GPU
    handover_gap_s: float = Field(DEFAULT_HANDOVER_GAP_S, ge=0, le=60)  # a warm hand-over's switch-over

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old in ("move_outage_s", "reconfig_outage_s"):
                if old in data:
                    raise ValueError(
                        f"{old} was replaced by relaunch_s and reconfig_s: each lever's outage is computed "
                        "from them and the launcher's handover (docs/config.md)"
                    )
        return data

    @field_validator("cgroup")
    @classmethod
    def _cgroup(cls, v: str | None) -> str | None:
        return None if v is None else check_cgroup_rel(v)

    @field_validator("instance")
    @classmethod
    def _instance(cls, v: str | None) -> str | None:
        if v is not None:
            InstanceRef.parse(v)
        return v

    @model_validator(mode="after")
    def _sensitive(self) -> TenantConfig:
        problems = []
        if self.role is Role.SENSITIVE:
            if self.slo_ms is None:
                problems.append(KeyProblem("slo_ms", "a sensitive tenant needs slo_ms"))
            if self.latency is None:
                problems.append(KeyProblem("latency", "a sensitive tenant needs a [tenants.latency] source"))
        if self.instance is not None:
            ref = InstanceRef.parse(self.instance)
            if self.gpu is not None and ref.gpu != self.gpu:
                problems.append(KeyProblem("instance", f"{self.instance} is not on gpu {self.gpu!r} (key gpu)"))
        if problems:
            raise KeyProblems(problems)
        return self

    def to_spec(self) -> TenantSpec:
        inst = InstanceRef.parse(self.instance) if self.instance else None
        return TenantSpec(
            name=self.name,
            role=self.role,
            cgroup=self.cgroup,
            gpu=self.gpu or (inst.gpu if inst else None),
            instance=inst,
            slo_s=None if self.slo_ms is None else self.slo_ms / 1000.0,
            quantile=self.quantile,
            devices=tuple(self.devices),
            mps=self.mps,
            relaunch_s=self.relaunch_s,
            reconfig_s=self.reconfig_s,
            handover=self.launcher.handover if self.launcher is not None else "restart",
            handover_gap_s=self.handover_gap_s,
            readiness_timeout_s=(
                self.launcher.readiness_timeout_s if self.launcher is not None else DEFAULT_READINESS_TIMEOUT_S
            ),
        )


class Levers(Strict):
    early_guard: bool = False
    guards: bool = True
    placement: bool = True
    mig: bool = True
    mps: bool = True


class PolicyConfig(Strict):
    # SLO evidence from requests (fsm.evidence) and cost-aware levers (fsm.levercost).
    evidence_burn: float = Field(2.0, gt=1, le=100)
    evidence_alpha: float = Field(1e-4, gt=0, lt=0.5)
    release_burn: float = Field(0.25, gt=0, lt=1)
    release_alpha: float = Field(0.2, gt=0, lt=1)
    rate_tau_s: float = Field(60.0, gt=0, le=86400)
    cost_margin: float = Field(0.5, ge=0, le=1000)  # 0: no cost check
    episode_prior_s: float = Field(300.0, gt=0, le=7 * 86400)
    unknown_cause_efficacy: float = Field(0.25, ge=0, le=1)
    relaunch_fail_prior: float = Field(0.0, ge=0, lt=1)
    guard_lesson_s: float = Field(14400.0, ge=0, le=90 * 86400)
    guard_min_cut: float = Field(0.2, ge=0, le=1)
    y_windows: int = Field(3, ge=1, le=100)
    z_windows: int = Field(5, ge=1, le=1000)
    release_ratio: float = Field(0.8, gt=0, lt=1)
    release_horizon_windows: int = Field(24, ge=1, le=10_000)
    min_window_count: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, ge=0)
    dwell_s: float = Field(60.0, ge=0)
    throttle_factor: float = Field(0.5, gt=0, le=1)
    # a cap is a whole number of bytes/s the kernel takes (1 .. 2**64 - 2: actuators/cgroup.py);
    # 10 TB/s is past any device's, and a floor past every cap would fail each guard
    throttle_floor_bps: float = Field(50e6, ge=1, le=1e13)
    throttle_expiry_s: float = Field(120.0, gt=0)
    guard_relief_s: float = Field(60.0, ge=0)  # 0: never
    relief_worst_case: bool = True
    mps_guard_percent: int = Field(50, ge=1, le=100)
    max_reconfigs_per_hour: int = Field(4, ge=0, le=60)
    hold_retries_per_tick: int = Field(1, ge=0, le=10_000)  # 0: no limit
    outage_budget_share: float = Field(0.5, ge=0, le=10)  # 0: no limit
    outage_budget_window_s: float = Field(14400.0, ge=60, le=90 * 86400)
    outage_warmup_s: float = Field(60.0, ge=0, le=86400)
    outage_budget_headroom: bool = True
    outage_spread_sigmas: float = Field(2.0, ge=0, le=10)
    outage_burst_wait: bool = True
    outage_tail_margin: float = Field(1.5, ge=0, le=100)  # 0: no check
    outage_window_anchor_s: float | None = Field(None, ge=0, le=1e11)  # Unix time; none: the first request
    outage_tail_prior_s: float = Field(0.0, ge=0, le=7 * 86400)  # 0: the rate ahead as read
    guard_cost_share: float = Field(0.05, ge=0, le=1)  # 0: no limit
    guard_budget_window_s: float = Field(3600.0, ge=60, le=90 * 86400)
    backoff_s: float = Field(60.0, ge=0)
    backoff_max_s: float = Field(900.0, ge=0)
    in_flight_timeout_s: float = Field(300.0, gt=0)
    io_share_tier: Literal["switch", "root_complex", "numa", "system"] = "numa"
    # Diagnosis thresholds: what counts as pressure on the victim's path and GPU.
    pcie_busy_ratio: float = Field(0.5, gt=0, le=1)
    sm_busy: float = Field(0.85, gt=0, le=1)
    dram_busy: float = Field(0.8, gt=0, le=1)
    high_bw_bps: float = Field(1e9, gt=0)
    move_step_up: bool = True
    mig_ladder: dict[str, list[str]] = {}  # GPU model -> profile names, smallest first
    levers: Levers = Levers()

    @field_validator("mig_ladder")
    @classmethod
    def _ladder(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        return checked_ladder(v)  # fsm/mig.py: a scenario's [policy] is checked with it too

    @model_validator(mode="after")
    def _backoff(self) -> PolicyConfig:
        if self.backoff_max_s < self.backoff_s:
            raise KeyProblem("backoff_max_s", f"must be at least backoff_s ({self.backoff_s:g})")
        return self

    def to_policy(self, enforce: bool) -> Policy:
        tier = {"switch": Tier.SWITCH, "root_complex": Tier.ROOT_COMPLEX, "numa": Tier.NUMA, "system": Tier.SYSTEM}
        return Policy(
            evidence_burn=self.evidence_burn,
            evidence_alpha=self.evidence_alpha,
            release_burn=self.release_burn,
            release_alpha=self.release_alpha,
            rate_tau_s=self.rate_tau_s,
            cost_margin=self.cost_margin or None,
            episode_prior_s=self.episode_prior_s,
            unknown_cause_efficacy=self.unknown_cause_efficacy,
            relaunch_fail_prior=self.relaunch_fail_prior,
            guard_lesson_s=self.guard_lesson_s,
            guard_min_cut=self.guard_min_cut,
            y_windows=self.y_windows,
            z_windows=self.z_windows,
            release_ratio=self.release_ratio,
            release_horizon_windows=self.release_horizon_windows,
            min_window_count=self.min_window_count,
            cooldown_s=self.cooldown_s,
            dwell_s=self.dwell_s,
            throttle_factor=self.throttle_factor,
            throttle_floor_bps=self.throttle_floor_bps,
            throttle_expiry_s=self.throttle_expiry_s,
            guard_relief_s=self.guard_relief_s or None,
            relief_worst_case=self.relief_worst_case,
            mps_guard_percent=self.mps_guard_percent,
            max_reconfigs_per_hour=self.max_reconfigs_per_hour,
            hold_retries_per_tick=self.hold_retries_per_tick,
            outage_budget_share=self.outage_budget_share or None,
            outage_budget_window_s=self.outage_budget_window_s,
            outage_warmup_s=self.outage_warmup_s,
            outage_budget_headroom=self.outage_budget_headroom,
            outage_spread_sigmas=self.outage_spread_sigmas,
            outage_burst_wait=self.outage_burst_wait,
            outage_tail_margin=self.outage_tail_margin or None,
            outage_window_anchor_s=self.outage_window_anchor_s,
            outage_tail_prior_s=self.outage_tail_prior_s,
            guard_cost_share=self.guard_cost_share or None,
            guard_budget_window_s=self.guard_budget_window_s,
            backoff_s=self.backoff_s,
            backoff_max_s=self.backoff_max_s,
            in_flight_timeout_s=self.in_flight_timeout_s,
            io_share_tier=tier[self.io_share_tier],
            pcie_busy_ratio=self.pcie_busy_ratio,
            sm_busy=self.sm_busy,
            dram_busy=self.dram_busy,
            high_bw_bps=self.high_bw_bps,
            move_step_up=self.move_step_up,
            mig_ladder={k: tuple(v) for k, v in self.mig_ladder.items()},
            early_guard=self.levers.early_guard,
            guards=self.levers.guards,
            placement=self.levers.placement,
            mig=self.levers.mig,
            mps=self.levers.mps,
            enforce=enforce,
        )


class PrometheusExporter(Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:9433"
    # /metrics and /status (with decision evidence) on a non-loopback address: only when asked.
    allow_remote: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        from controller.listen import split_listen

        split_listen(v)
        return v

    @model_validator(mode="after")
    def _remote(self) -> PrometheusExporter:
        from controller.listen import is_loopback, split_listen

        host, _ = split_listen(self.listen)
        if self.enabled and not is_loopback(host) and not self.allow_remote:
            raise KeyProblem(
                "listen",
                f"{self.listen} is reachable from other hosts (metrics and /status with decision evidence):"
                " set allow_remote = true beside it to mean it, or listen on 127.0.0.1",
            )
        return self


class MqttExporter(Strict):
    enabled: bool = False
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: AbsPath | None = None  # never the password itself in the config
    tls: bool = False
    tls_ca: AbsPath | None = None
    queue_max: int = Field(1000, ge=1, le=1_000_000)
    control_topic: bool = False  # pause / resume / dry-run over MQTT; off by default
    latency_ingest: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if (why := mqtt_url_problem(v)) is not None:
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _auth(self) -> MqttExporter:
        if self.password_file is not None and not self.username:
            # the MQTT CONNECT packet carries a password only beside a user name (MQTT 3.1.1, 3.1.2.9)
            raise KeyProblem("password_file", "password_file needs username: a password is sent only with a user name")
        if "@" in urlsplit(self.url).netloc:
            raise KeyProblem(
                "url", "credentials in the url are not used (and would sit in the config): set username, password_file"
            )
        if self.control_topic and not self.username:
            raise KeyProblem("control_topic", "control_topic needs username/password_file (authentication)")
        if self.tls_ca is not None and not self.tls and not self.url.startswith("mqtts://"):
            # The CA would be ignored and the connection left in plain text.
            raise KeyProblem("tls_ca", "tls_ca is set but TLS is off: set tls = true or use an mqtts:// url")
        return self


class Exporters(Strict):
    prometheus: PrometheusExporter = PrometheusExporter()
    mqtt: MqttExporter = MqttExporter()


class Signals(Strict):
    nvml: bool = True
    dcgm: Literal["auto", "pydcgm", "exporter", "off"] = "auto"
    dcgm_exporter_url: str | None = "http://127.0.0.1:9400/metrics"
    timeout_s: float = Field(1.0, gt=0, le=30)
    proc_root: AbsPath = "/proc"
    sys_root: AbsPath = "/sys"

    @field_validator("dcgm_exporter_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and (why := url_problem(v, ("http", "https"))) is not None:
            raise ValueError(why)
        return v


class GpuConfig(Strict):
    name: Name  # gpu0
    index: int = Field(ge=0, lt=1 << 32)  # NVML takes an unsigned int: ctypes would wrap a larger one to another GPU
    model: str | None = None  # A100-SXM4-40GB; default: what NVML reports

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None:
            from fsm.mig import model_by_name

            try:
                model_by_name(v)
            except KeyError as e:
                raise ValueError(e.args[0]) from None
        return v


class TopologyConfig(Strict):
    source: Literal["auto", "sysfs", "topo-matrix", "none"] = "auto"
    topo_matrix_file: AbsPath | None = None


class Config(Strict):
    host: HostConfig = HostConfig()
    tenants: list[TenantConfig] = []
    gpus: list[GpuConfig] = []
    policy: PolicyConfig = PolicyConfig()
    exporters: Exporters = Exporters()
    signals: Signals = Signals()
    topology: TopologyConfig = TopologyConfig()

    @model_validator(mode="after")
    def _cross(self) -> Config:
        # Checks across sections (GPU references, MIG placement, shared cgroups, ...) live in
        # controller/config_checks.py; each problem names its key path and the tenants involved.
        from controller.config_checks import model_problems

        errors = [KeyProblem(p.key, p.message) for p in model_problems(self) if p.error]
        if errors:
            raise KeyProblems(errors)
        return self

    @property
    def enforce(self) -> bool:
        return self.host.mode == "enforce"

    def tenant_specs(self) -> dict[str, TenantSpec]:
        return {t.name: t.to_spec() for t in self.tenants}

    def policy_obj(self) -> Policy:
        from controller.platform import restrict

        return restrict(self, self.policy.to_policy(self.enforce))


class ConfigError(Exception):
    """All problems with a config file, each naming the file, the key path and what was wrong."""

    def __init__(self, file: str, problems: list[str], warnings: list[str] | None = None) -> None:
        self.file = file
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(f"{file}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Checked:
    """A config that passed every check, and the warnings that remain (legal, probably not meant)."""

    config: Config
    warnings: list[str]


def parse_config(text: str, file: str = "<config>") -> Config:
    try:
        data = loads_toml(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, [f"TOML syntax: {e}"]) from None
    return config_from_data(data, file)


def config_from_data(data: Any, file: str = "<config>") -> Config:
    """The validated config of parsed TOML: every problem named by its key path (ConfigError)."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(file, problems_of(e, data)) from None


def load_config(path: str | Path) -> Config:
    """The validated config (per key and across sections); the filesystem is not looked at."""
    p = Path(path)
    try:
        text = read_small_text(p)
    except OSError as e:
        raise ConfigError(str(p), [f"cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), [f"not UTF-8 text: {e}"]) from None
    return parse_config(text, str(p))


def check_loaded(cfg: Config, file: str, models: Callable[[str], GpuModel | None] | None = None) -> Checked:
    """Everything beyond the model: MIG homes against the GPUs' profile tables (`models`: the
    driver's, where known; see config_checks.mig_problems), the files and programs the config
    names, and the warnings. Raises ConfigError (with the warnings) when any problem is an error."""
    from controller.config_checks import mig_problems, model_problems
    from controller.config_files import file_problems

    problems = [p for p in model_problems(cfg) if not p.error] + mig_problems(cfg, models) + file_problems(cfg)
    warnings = [p.line() for p in problems if not p.error]
    errors = [p.line() for p in problems if p.error]
    if errors:
        raise ConfigError(file, errors, warnings)
    return Checked(cfg, warnings)


def load_checked(path: str | Path, models: Callable[[str], GpuModel | None] | None = None) -> Checked:
    """What `check-config`, `run` and a SIGHUP reload use: load_config, then check_loaded."""
    return check_loaded(load_config(path), str(path), models)


def layout_of(text: str) -> tuple[Slot, ...]:
    return tuple(sorted(Slot.parse(s) for s in text.split(",") if s.strip()))
