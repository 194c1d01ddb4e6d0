"""The TOML configuration, validated by pydantic. Unknown keys are errors; every problem is
reported with the file, the dotted key path and what was expected.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fsm.mig import Slot
from fsm.observation import InstanceRef
from fsm.spec import Policy, Role, TenantSpec
from fsm.topology import Tier
from schema.problems import problems_of

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '@', '-'")
    return v


WARM_OUTAGE_S = 1.0  # a warm hand-over's switch-over, budgeted generously

# Host and tenant names end up in metric labels, MQTT topics and file names.
Name = Annotated[str, AfterValidator(_check_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_cgroup_rel(path: str) -> str:
    """A cgroup path relative to the configured root: no '..', no absolute path, no odd bytes."""
    if not path or len(path) > 1024:
        raise ValueError("must be a non-empty relative path of at most 1024 characters")
    if any(c in path for c in "\0\n\r\t"):
        raise ValueError("must not contain NUL, newline, carriage return or tab")
    p = PurePosixPath(path)
    if p.is_absolute():
        raise ValueError("must be relative to host.cgroup_root (no leading '/')")
    if any(part in ("..", ".") for part in path.split("/")):
        raise ValueError("must not contain '.' or '..' components")
    return str(p)


class HostConfig(Strict):
    name: Name = "localhost"
    sample_period_s: float = Field(2.0, gt=0.05, le=60)
    mode: Literal["enforce", "dry-run"] = "dry-run"
    state_dir: str = "/var/lib/tailguard"
    cgroup_root: str = "/sys/fs/cgroup"
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
    path: str | None = None  # jsonl
    field: str = "latency_s"  # jsonl field holding seconds
    timeout_s: float = Field(1.0, gt=0, le=30)

    @model_validator(mode="after")
    def _needs(self) -> LatencySource:
        if self.kind == "prometheus" and not self.url:
            raise ValueError("kind 'prometheus' needs url")
        if self.kind == "prometheus" and self.url and not re.match(r"^https?://", self.url):
            raise ValueError("url must start with http:// or https://")
        if self.kind == "jsonl" and not self.path:
            raise ValueError("kind 'jsonl' needs path")
        return self


class Launcher(Strict):
    kind: Literal["systemd", "command"]
    unit: str | None = None
    command: list[str] | None = None  # argv template; {uuid} {instance} {tenant} are substituted
    # restart: stop, relaunch on the target; warm: start a copy there, wait until it is ready, stop the old
    handover: Literal["restart", "warm"] = "restart"
    stop_command: list[str] | None = None  # warm, kind command: argv template that stops one copy
    ready_command: list[str] | None = None  # warm: argv template, exit 0 once that copy serves
    readiness_timeout_s: float = Field(120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _needs(self) -> Launcher:
        warm = self.handover == "warm"
        if self.kind == "systemd" and (not self.unit or not re.match(r"^[A-Za-z0-9:_.@\\-]+\.service$", self.unit)):
            raise ValueError("kind 'systemd' needs unit, a name ending in .service")
        if self.kind == "systemd" and warm and not re.match(r"^[A-Za-z0-9:_.\\-]+@\.service$", self.unit or ""):
            raise ValueError("handover 'warm' with kind 'systemd' needs unit, a template NAME@.service")
        if self.kind == "command" and not self.command:
            raise ValueError("kind 'command' needs command, a non-empty list of arguments")
        if self.kind == "command" and warm and not self.stop_command:
            raise ValueError("handover 'warm' with kind 'command' needs stop_command, a non-empty list of arguments")
        if self.stop_command is not None and (self.kind != "command" or not warm):
            raise ValueError("stop_command is for kind 'command' with handover 'warm'")
        if self.ready_command is not None and not warm:
            raise ValueError("ready_command is for handover 'warm'")
        for key in ("command", "stop_command", "ready_command"):
            argv = getattr(self, key)
            if argv is not None and (not argv or any(not a or "\0" in a for a in argv)):
                raise ValueError(f"{key} must be a non-empty list of non-empty arguments without NUL")
        return self


class TenantConfig(Strict):
    name: Name
    role: Role
    cgroup: str | None = None
    gpu: str | None = None
    instance: str | None = None  # GPU/PROFILE@START, e.g. gpu0/3g.20gb@4
    devices: list[str] = []
    slo_ms: float | None = Field(None, gt=0)
    quantile: float = Field(0.99, gt=0, lt=1)
    latency: LatencySource | None = None
    launcher: Launcher | None = None
    mps: bool = False
    # What a move costs this tenant in unavailability (s); unset: TenantSpec's defaults (the
    # paper's 5 / 18 s) with a restart hand-over, WARM_OUTAGE_S with a warm one.
    move_outage_s: float | None = Field(None, ge=0, le=3600)
    reconfig_outage_s: float | None = Field(None, ge=0, le=3600)

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
        if self.role is Role.SENSITIVE:
            if self.slo_ms is None:
                raise ValueError("a sensitive tenant needs slo_ms")
            if self.latency is None:
                raise ValueError("a sensitive tenant needs a [latency] source")
        if self.instance is not None:
            ref = InstanceRef.parse(self.instance)
            if self.gpu is not None and ref.gpu != self.gpu:
                raise ValueError(f"instance {self.instance} is not on gpu {self.gpu}")
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
            **self._outages(),
        )

    def _outages(self) -> dict[str, float]:
        """The keys set here or implied by a warm hand-over; the rest keep TenantSpec's defaults."""
        warm = self.launcher is not None and self.launcher.handover == "warm"
        out = {}
        for key in ("move_outage_s", "reconfig_outage_s"):
            v = getattr(self, key)
            if v is not None or warm:
                out[key] = v if v is not None else WARM_OUTAGE_S
        return out


class Levers(Strict):
    early_guard: bool = False
    guards: bool = True
    placement: bool = True
    mig: bool = True
    mps: bool = True


class PolicyConfig(Strict):
    y_windows: int = Field(3, ge=1, le=100)
    z_windows: int = Field(5, ge=1, le=1000)
    release_ratio: float = Field(0.8, gt=0, lt=1)
    release_horizon_windows: int = Field(24, ge=1, le=10_000)
    min_window_count: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, ge=0)
    dwell_s: float = Field(60.0, ge=0)
    throttle_factor: float = Field(0.5, gt=0, le=1)
    throttle_floor_bps: float = Field(50e6, gt=0)
    throttle_expiry_s: float = Field(120.0, gt=0)
    guard_relief_s: float = Field(60.0, ge=0)  # 0: never
    mps_guard_percent: int = Field(50, ge=1, le=100)
    max_reconfigs_per_hour: int = Field(4, ge=0, le=60)
    outage_budget_share: float = Field(0.5, ge=0, le=10)  # 0: no limit
    backoff_s: float = Field(60.0, ge=0)
    in_flight_timeout_s: float = Field(300.0, gt=0)
    io_share_tier: Literal["switch", "root_complex", "numa", "system"] = "numa"
    mig_ladder: dict[str, list[str]] = {}  # GPU model -> profile names, smallest first
    levers: Levers = Levers()

    @field_validator("mig_ladder")
    @classmethod
    def _ladder(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from fsm.mig import model_by_name

        out = {}
        for key, names in v.items():
            try:
                model = model_by_name(key)
                profiles = [model.profile(n) for n in names]
            except KeyError as e:
                raise ValueError(f"{key}: {e.args[0]}") from None
            slices = [p.slices for p in profiles]
            if not names or slices != sorted(set(slices)):
                raise ValueError(f"{key}: profiles must be given smallest first, each larger than the last")
            out[model.key] = names
        return out

    def to_policy(self, enforce: bool) -> Policy:
        tier = {"switch": Tier.SWITCH, "root_complex": Tier.ROOT_COMPLEX, "numa": Tier.NUMA, "system": Tier.SYSTEM}
        return Policy(
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
            mps_guard_percent=self.mps_guard_percent,
            max_reconfigs_per_hour=self.max_reconfigs_per_hour,
            outage_budget_share=self.outage_budget_share or None,
            backoff_s=self.backoff_s,
            in_flight_timeout_s=self.in_flight_timeout_s,
            io_share_tier=tier[self.io_share_tier],
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

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9433")
        return v


class MqttExporter(Strict):
    enabled: bool = False
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: str | None = None  # never the password itself in the config
    tls: bool = False
    tls_ca: str | None = None
    queue_max: int = Field(1000, ge=1, le=1_000_000)
    control_topic: bool = False  # pause / resume / dry-run over MQTT; off by default
    latency_ingest: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^mqtts?://[^/:]+(:\d{1,5})?/?$", v):
            raise ValueError("must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return v

    @model_validator(mode="after")
    def _auth(self) -> MqttExporter:
        if self.control_topic and not self.username:
            raise ValueError("control_topic needs username/password_file (authentication)")
        return self


class Exporters(Strict):
    prometheus: PrometheusExporter = PrometheusExporter()
    mqtt: MqttExporter = MqttExporter()


class Signals(Strict):
    nvml: bool = True
    dcgm: Literal["auto", "pydcgm", "exporter", "off"] = "auto"
    dcgm_exporter_url: str | None = "http://127.0.0.1:9400/metrics"
    timeout_s: float = Field(1.0, gt=0, le=30)
    proc_root: str = "/proc"
    sys_root: str = "/sys"


class GpuConfig(Strict):
    name: str  # gpu0
    index: int = Field(ge=0)
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
    topo_matrix_file: str | None = None


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
        names = [t.name for t in self.tenants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(dup)}")
        gnames = [g.name for g in self.gpus]
        if len(set(gnames)) != len(gnames):
            raise ValueError("gpu names must be unique")
        homes = [t.instance for t in self.tenants if t.instance]
        if len(set(homes)) != len(homes):
            raise ValueError("two tenants name the same MIG instance")
        for t in self.tenants:
            if t.instance and self.gpus and InstanceRef.parse(t.instance).gpu not in gnames:
                raise ValueError(f"tenant {t.name}: instance {t.instance} is on a GPU not in [[gpus]]")
        pushed = [t.name for t in self.tenants if t.latency is not None and t.latency.kind == "mqtt"]
        if pushed and not self.exporters.mqtt.enabled:
            # Their latencies arrive on tailguard/<host>/latency/<tenant>: without the bridge, never.
            raise ValueError(
                f"tenant(s) {', '.join(pushed)} push latency over MQTT: set exporters.mqtt.enabled = true"
            )
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

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {p}" for p in problems))


def parse_config(text: str, file: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, [f"TOML syntax: {e}"]) from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = problems_of(e, data)
        raise ConfigError(file, problems) from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [f"cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(p), [f"not UTF-8 text: {e}"]) from None
    return parse_config(text, str(p))


def layout_of(text: str) -> tuple[Slot, ...]:
    return tuple(sorted(Slot.parse(s) for s in text.split(",") if s.strip()))
