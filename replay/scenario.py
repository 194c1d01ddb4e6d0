"""Scenario files (TOML): hosts, their PCIe tree, GPUs with real MIG layouts, tenants and demand.

Every key is documented in docs/scenarios.md. Validation is pydantic for shapes and ranges, then a
cross-check pass for what refers to what (parents, paths, GPU models, MIG profiles and placements
from fsm.mig). Every problem names the file and the dotted key, e.g.
`paper-p4d.toml: hosts[0](p4d).nodes[4](gpu0).layout[1]: GPU model A100-SXM4-40GB has no MIG profile '1g.10gb'`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fsm.mig import GpuModel, Slot, checked_ladder, layout_problems, model_by_name
from fsm.observation import InstanceRef
from fsm.outage import DEFAULT_HANDOVER_GAP_S, DEFAULT_RECONFIG_S, DEFAULT_RELAUNCH_S
from fsm.spec import HostSpec, Policy, Role, TenantSpec
from fsm.topology import HOST_ID, Node, NodeKind, Tier, Topology
from replay.fidelity import MAX_DURATION_S, STRICT, ActuationFidelity, OwnRestarts, SignalFidelity
from replay.policy_ranges import policy_problems
from replay.request_traces import MAX_CONTEXT_TOKENS, MAX_GENERATED_TOKENS
from replay.topology_view import controller_view
from schema.files import not_a_file, read_small_text
from schema.names import NAME_PATTERN, NAME_RULE, Name
from schema.problems import KeyProblem, KeyProblems, loads_toml, problems_of

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DATA_DIR = Path(__file__).parent / "data"
CPU = "cpu"  # path endpoint: host memory (the NUMA node of the other end)
# The longest simulated run (and the longest MMPP state): a month of 2 s ticks is 1.3 million, hours
# of work; 1e12 s was a run that never ended.
# Realistic bounds on the per-request and per-link figures (compute_ms = 1e300 overflowed numpy and
# printed a table of '-', a link of 1e-300 GB/s the same): far beyond any real one, far inside a float.
MAX_REQUEST_MS = 3_600_000.0  # an hour of GPU or CPU time for one request (or one engine step)
MAX_MS_PER_TOKEN = 1000.0  # a second per token on one slice: a GPU prefills thousands a second
MAX_REQUEST_BYTES = 1e12  # 1 TB moved by one request: more than any GPU's memory (192 GB)
MAX_BYTES_PER_TOKEN = 1e9  # 1 GB per token: a KV entry of the largest models is a few MB
MIN_LINK_GBPS = 0.001  # 1 MB/s: far below any PCIe link (Gen1 x1 is 0.25 GB/s)
MAX_LINK_GBPS = 10_000.0  # 10 TB/s: above NVLink 5's 1.8 TB/s, PCIe 7 x16's 242 GB/s
MAX_MEMORY_GB = 10_000.0  # weights or overhead of one server: 10 TB, past any GPU's memory


class ScenarioError(Exception):
    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(f"{file}: {p}" for p in problems))


class _Strict(BaseModel):
    model_config = STRICT


class Schedule(_Strict):
    """On/off windows [start, end) in seconds, repeating every period_s (none: always on), and an
    optional rate profile: `profile` levels at equal steps over the period, linearly interpolated
    and cyclic (a diurnal load: 24 hourly values with period_s = 86400)."""

    period_s: float | None = Field(None, gt=0)
    on: list[tuple[float, float]] = []
    level: float = Field(1.0, ge=0, le=1000)  # demand multiplier while on (x1000: past any real surge)
    profile: list[float] = []

    @model_validator(mode="after")
    def _check(self) -> Schedule:
        for a, b in self.on:
            if not 0 <= a < b:
                raise ValueError(f"window [{a}, {b}] must have 0 <= start < end")
            if self.period_s is not None and b > self.period_s:
                raise ValueError(f"window [{a}, {b}] ends after period_s {self.period_s}")
        if self.profile:
            if self.period_s is None:
                raise ValueError("profile needs period_s (the profile's levels span one period)")
            if len(self.profile) < 2 or min(self.profile) < 0 or max(self.profile) <= 0:
                raise ValueError("profile needs at least 2 levels >= 0, one of them > 0")
        return self

    def _shape(self, t: float) -> float:
        if not self.profile or self.period_s is None:
            return 1.0
        n = len(self.profile)
        pos = (t % self.period_s) / self.period_s * n
        i = int(pos) % n
        frac = pos - int(pos)
        return self.profile[i] + (self.profile[(i + 1) % n] - self.profile[i]) * frac

    def active(self, t: float) -> float:
        if self.on:
            x = t % self.period_s if self.period_s else t
            if not any(a <= x < b for a, b in self.on):
                return 0.0
        return self.level * self._shape(t)

    def peak(self) -> float:
        """The highest level the schedule reaches (arrivals are drawn at this rate, then thinned)."""
        return self.level * (max(self.profile) if self.profile else 1.0)


class NodeConfig(_Strict):
    id: str
    kind: Literal["numa", "root_complex", "switch", "gpu", "nvme", "nic"]
    parent: str | None = None  # numa nodes hang off the host
    # GB/s of the uplink, each direction (1 GB = 1e9 bytes)
    link_gbps: float | None = Field(None, ge=MIN_LINK_GBPS, le=MAX_LINK_GBPS)
    # toward the root complex, when not link_gbps
    up_gbps: float | None = Field(None, ge=MIN_LINK_GBPS, le=MAX_LINK_GBPS)
    # from the root complex, when not link_gbps
    down_gbps: float | None = Field(None, ge=MIN_LINK_GBPS, le=MAX_LINK_GBPS)
    # both directions together, when less than their sum
    duplex_gbps: float | None = Field(None, ge=MIN_LINK_GBPS, le=MAX_LINK_GBPS)
    index: int | None = Field(None, ge=0)  # numa: node number
    cpus: str | None = None  # numa: "0-23,48-71"
    model: str | None = None  # gpu: A100-SXM4-40GB, ...
    layout: list[str] | None = None  # gpu: starting MIG layout, PROFILE@START
    aliases: list[str] = []  # block device names, MAJ:MIN, NIC names
    bdf: str | None = None


class Requests(_Strict):
    """Request arrivals and per-request cost of a sensitive tenant."""

    rate: float | None = Field(None, gt=0)  # mean arrivals per second (of the process below)
    # The arrival process with `rate`: "poisson"; "gamma" = a renewal process with Gamma
    # inter-arrival times of coefficient of variation `cv` (shape 1/cv^2); "mmpp" = a two-state
    # Markov-modulated Poisson process: calm and burst periods of exponential lengths (means
    # calm_mean_s, burst_mean_s), the burst rate burst_ratio x the calm rate, the mean `rate`.
    arrivals: Literal["poisson", "gamma", "mmpp"] = "poisson"
    cv: float = Field(1.0, gt=0, le=20)
    burst_ratio: float = Field(1.0, ge=1, le=1000)
    burst_mean_s: float = Field(10.0, gt=0, le=MAX_DURATION_S)
    calm_mean_s: float = Field(30.0, gt=0, le=MAX_DURATION_S)
    # a request trace (replay/request_traces.py: Azure, BurstGPT, Mooncake), relative to the file
    trace: str | None = Field(None, min_length=1)
    trace_speed: float = Field(1.0, gt=0, le=10_000)  # replay the trace this many times faster
    # context tokens per request when arrivals come from `rate` (a trace's are bounded alike)
    tokens: float = Field(0.0, ge=0, le=MAX_CONTEXT_TOKENS)
    compute_ms: float = Field(ge=0, le=MAX_REQUEST_MS)  # on a 1-slice instance, fixed part
    compute_ms_per_token: float = Field(0.0, ge=0, le=MAX_MS_PER_TOKEN)  # prefill grows with context tokens
    slice_exponent: float = Field(1.0, ge=0, le=2)  # compute / slices ** exponent
    bytes: float = Field(0.0, ge=0, le=MAX_REQUEST_BYTES)  # host<->device bytes per request, fixed part
    bytes_per_token: float = Field(0.0, ge=0, le=MAX_BYTES_PER_TOKEN)
    # vLLM's admission check: a prompt of max_model_len tokens or more is refused (HTTP 400), never
    # queued (vllm/v1/engine/input_processor.py, _validate_prompt_len). vLLM's default is the
    # model's context length (its config's max_position_embeddings). None: no limit.
    max_model_len: int | None = Field(None, ge=1, le=MAX_CONTEXT_TOKENS)
    # PCIe is full duplex: this share of the bytes goes device -> host (results: up the GPU's
    # switch), the rest host -> device (prompt, inputs, prefix-cache blocks: down it).
    d2h_share: float = Field(0.0, ge=0, le=1)
    # CPU-side time per request (fcfs: tokenisation, detokenisation, HTTP), on the tenant's cores
    # (`cpus`): stretched when other tenants' threads oversubscribe them. Batched: `step_ms` is that.
    cpu_ms: float = Field(0.0, ge=0, le=MAX_REQUEST_MS)
    noise_cv: float = Field(0.2, ge=0, le=3)  # lognormal multiplicative noise on compute time
    # output tokens per request with `rate` (a trace has its own, bounded alike): 1e9 made a 60 s
    # replay run for minutes (a batched server's decodes are simulated step by step)
    generated_tokens: float = Field(0.0, ge=0, le=MAX_GENERATED_TOKENS)
    # The service model: "fcfs" = one request at a time (Lindley); "batched" = vLLM-style engine
    # steps of chunked prefill beside the running decodes (replay.batching). Batched keys below;
    # their defaults are vLLM's (EngineArgs.get_batch_defaults, devices under 70 GiB).
    server: Literal["fcfs", "batched"] = "fcfs"
    # token budget per step (prefill chunks + decodes)
    max_batched_tokens: int = Field(2048, ge=1, le=MAX_CONTEXT_TOKENS)
    max_seqs: int = Field(256, ge=1, le=1_000_000)  # sequences per step
    # most prompt tokens of one request per step (0: off)
    long_prefill_tokens: int = Field(0, ge=0, le=MAX_CONTEXT_TOKENS)
    step_ms: float = Field(0.0, ge=0, le=MAX_REQUEST_MS)  # per step, CPU side: not scaled by slices
    step_floor_ms: float = Field(0.0, ge=0, le=MAX_REQUEST_MS)  # per step on 1 slice: memory-bound floor (weights read)
    # per step on 1 slice, per context token of a decode
    decode_ms_per_token: float = Field(0.0, ge=0, le=MAX_MS_PER_TOKEN)
    # KV cache, sized as vLLM does at start from the instance's memory (so a bigger slice has more):
    # memory x gpu_memory_utilization - weights - overhead, in blocks of kv_block_tokens tokens.
    # kv_bytes_per_token = 0 (default): no capacity limit (no admission control, no preemption).
    kv_bytes_per_token: float = Field(0.0, ge=0, le=MAX_BYTES_PER_TOKEN)  # 2 x layers x KV heads x head dim x bytes
    weights_gb: float = Field(0.0, ge=0, le=MAX_MEMORY_GB)  # resident weights, GB (1e9 bytes)
    overhead_gb: float = Field(0.0, ge=0, le=MAX_MEMORY_GB)  # activation peak + non-torch memory (CUDA graphs, ...), GB
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # vLLM's default
    kv_block_tokens: int = Field(16, ge=1, le=1024)  # vLLM block_size default

    @model_validator(mode="after")
    def _one(self) -> Requests:
        if (self.rate is None) == (self.trace is None):
            raise ValueError("give exactly one of rate (Poisson) or trace (a CSV file)")
        if self.trace is not None:
            given = sorted(self.model_fields_set & _PROCESS_KEYS)
            if given:
                raise ValueError(f"{', '.join(given)}: only with rate (a trace brings its own arrivals)")
        if self.arrivals != "gamma" and "cv" in self.model_fields_set:
            raise ValueError('cv: only with arrivals = "gamma"')
        mmpp = sorted(self.model_fields_set & (_PROCESS_KEYS - {"arrivals", "cv"}))
        if self.arrivals != "mmpp" and mmpp:
            raise ValueError(f'{", ".join(mmpp)}: only with arrivals = "mmpp"')
        if self.server == "batched" and "cpu_ms" in self.model_fields_set:
            raise ValueError('cpu_ms: only with server = "fcfs" (a batched server\'s CPU side is step_ms)')
        if self.server != "batched":
            given = sorted(self.model_fields_set & _BATCHED_KEYS)
            if given:
                raise ValueError(f'{", ".join(given)}: only with server = "batched"')
        if 0 < self.kv_bytes_per_token < 1:  # a denormal overflowed the cache's size in tokens
            raise ValueError("kv_bytes_per_token: 0 (no KV cache limit) or at least 1 byte")
        kv = self.model_fields_set & (_KV_KEYS - {"kv_bytes_per_token"})
        if kv and self.kv_bytes_per_token <= 0:
            raise ValueError(f"{', '.join(sorted(kv))}: only with kv_bytes_per_token > 0 (the KV cache's size)")
        return self


_PROCESS_KEYS = {"arrivals", "cv", "burst_ratio", "burst_mean_s", "calm_mean_s"}
_KV_KEYS = {"kv_bytes_per_token", "weights_gb", "overhead_gb", "gpu_memory_utilization", "kv_block_tokens"}
_BATCHED_KEYS = {
    "max_batched_tokens",
    "max_seqs",
    "long_prefill_tokens",
    "step_ms",
    "step_floor_ms",
    "decode_ms_per_token",
} | _KV_KEYS


class FlowConfig(_Strict):
    path: tuple[str, str]  # endpoints: device ids or "cpu"


class Reroute(_Strict):
    """From at_s into each reroute period on, the tenant's flows take these paths instead (an
    aggressor that a scheduler moves to another GPU or switch)."""

    at_s: float = Field(ge=0)
    flows: list[FlowConfig] = Field(min_length=1)


MAX_RATE = 1e5  # requests/s of one simulated tenant at its peak: far above any one GPU server's


class TenantConfig(_Strict):
    name: Name  # the daemon's config's rule (schema/names.py): it names metrics, topics and files
    role: Role
    instance: str | None = None  # GPU/PROFILE@START
    cgroup: str | None = None
    devices: list[str] = []
    slo_ms: float | None = Field(None, ge=0.001)  # at least 1 us: a subnormal one became an SLO of 0 s
    quantile: float = Field(0.99, gt=0, lt=1)
    mps: bool = False
    requests: Requests | None = None  # sensitive
    flows: list[FlowConfig] = []  # bulk / compute: every leg carries the tenant's rate
    demand_gbps: float = Field(0.0, ge=0, le=MAX_LINK_GBPS)  # bytes/s the flows want (GB/s), while the schedule is on
    sm_active: float = Field(0.0, ge=0, le=1)  # compute: SM activity of its instance while on
    schedule: Schedule = Schedule()
    reroute: list[Reroute] = []  # flows that change path on a schedule (bulk / compute)
    reroute_period_s: float | None = Field(None, gt=0)  # the reroutes repeat with this period
    handover: Literal["restart", "warm"] | None = None  # none: the scenario's [scenario] handover
    relaunch_s: float | None = Field(None, ge=0, le=3600)  # none: the scenario's [scenario] relaunch_s
    # The CPU channel (off unless set): the cores the tenant's processes may run on (its cpuset,
    # "0-23,48-71"), and for a non-sensitive tenant the threads it keeps runnable there while its
    # schedule is on (x level). A sensitive tenant's CPU side is one thread (vLLM's engine loop).
    cpus: str | None = None
    cpu_threads: float = Field(0.0, ge=0, le=100_000)

    @model_validator(mode="after")
    def _role(self) -> TenantConfig:
        if self.role is Role.SENSITIVE:
            if self.slo_ms is None:
                raise ValueError("a sensitive tenant needs slo_ms")
            if self.requests is None:
                raise ValueError("a sensitive tenant needs [requests]")
            if self.instance is None:
                raise ValueError("a sensitive tenant needs instance")
            r = self.requests
            peak = (r.rate or 0.0) * (r.burst_ratio if r.arrivals == "mmpp" else 1.0) * self.schedule.peak()
            if peak > MAX_RATE:  # arrivals are drawn per tick at the peak rate: 1e9/s is gigabytes
                raise ValueError(
                    f"requests.rate x the schedule's peak level is {peak:.3g} requests/s: at most {MAX_RATE:g}"
                )
        elif self.requests is not None:
            raise ValueError("only sensitive tenants take [requests]")
        if self.flows and self.demand_gbps <= 0:
            raise ValueError("flows need demand_gbps > 0")
        if self.reroute:
            if not self.flows:
                raise ValueError("reroute changes the tenant's flows: give flows first")
            ats = [r.at_s for r in self.reroute]
            if ats != sorted(set(ats)):
                raise ValueError("reroute: at_s must be strictly increasing")
            if self.reroute_period_s is not None and ats[-1] >= self.reroute_period_s:
                raise ValueError(f"reroute: at_s {ats[-1]} is not inside reroute_period_s {self.reroute_period_s}")
        elif self.reroute_period_s is not None:
            raise ValueError("reroute_period_s: only with reroute")
        if self.cpu_threads > 0 and self.role is Role.SENSITIVE:
            raise ValueError("cpu_threads: a sensitive tenant's CPU side is its requests' cpu_ms / step_ms")
        if self.cpu_threads > 0 and self.cpus is None:
            raise ValueError("cpu_threads needs cpus (the cores the threads run on)")
        return self

    def flows_at(self, t: float) -> int:
        """Which flow set is in force at t: 0 = `flows`, k = reroute[k - 1]."""
        if not self.reroute:
            return 0
        x = t % self.reroute_period_s if self.reroute_period_s else t
        k = 0
        for i, r in enumerate(self.reroute):
            if r.at_s <= x:
                k = i + 1
        return k

    def flow_sets(self) -> list[list[FlowConfig]]:
        return [self.flows] + [r.flows for r in self.reroute]


class HostConfig(_Strict):
    name: Name
    copies: int = Field(1, ge=1, le=64)  # identical hosts (each with its own controller)
    nodes: list[NodeConfig]
    tenants: list[TenantConfig]


PAPER_FIGURES = {"p99_ms": 3_600_000.0, "violation_rate": 1.0}


class ScenarioMeta(_Strict):
    name: str
    description: str = ""
    duration_s: float = Field(3600.0, gt=0, le=MAX_DURATION_S)
    # In the suite (`tailguard replay --suite`) at this duration; none: not in the suite.
    suite_duration_s: float | None = Field(None, ge=7200, le=MAX_DURATION_S)
    tick_s: float = Field(2.0, gt=0.05, le=60)
    seed: int = Field(1, ge=0)  # numpy's generators take no negative seed
    # What a move costs (fsm.outage, the same function the decision core budgets with): a MIG
    # reconfiguration, a tenant's relaunch until it serves (per tenant: its relaunch_s).
    reconfig_s: float = Field(DEFAULT_RECONFIG_S, ge=0, le=3600)
    relaunch_s: float = Field(DEFAULT_RELAUNCH_S, ge=0, le=3600)
    # How a moved tenant changes instance: "restart" stops it for its relaunch; "warm" keeps the old
    # copy serving while the new one warms up, then switches with a gap of handover_gap_s.
    handover: Literal["restart", "warm"] = "restart"
    handover_gap_s: float = Field(DEFAULT_HANDOVER_GAP_S, ge=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in (("reconfig_downtime_s", "reconfig_s"), ("move_downtime_s", "relaunch_s")):
                if old in data:
                    raise ValueError(f"{old} is now {new} (a move's outage is computed from both, fsm/outage.py)")
        return data

    @model_validator(mode="after")
    def _ticks(self) -> ScenarioMeta:
        bad = []
        if self.duration_s < self.tick_s:  # a run of no whole tick printed figures of nothing
            bad.append(
                KeyProblem("duration_s", f"{self.duration_s:g} s is shorter than one tick (tick_s = {self.tick_s:g})")
            )
        every = self.restarts.every_s
        if every is not None and every < self.tick_s:
            bad.append(
                KeyProblem(
                    "restarts.every_s",
                    f"{every:g} s is shorter than one tick (tick_s = {self.tick_s:g}): restarts come per tick",
                )
            )
        if bad:
            raise KeyProblems(bad)
        return self

    compute_coupling: float = Field(0.0, ge=0, le=1)  # slowdown per unit of neighbours' SM load
    signals: SignalFidelity = SignalFidelity()
    actuation: ActuationFidelity = ActuationFidelity()
    restarts: OwnRestarts = OwnRestarts()
    irq_base: float = Field(2000.0, ge=0, le=1e7)  # interrupts/s per CPU with no I/O (1e7: past any CPU's)
    paper: dict[str, dict[str, float]] = {}  # policy -> {"p99_ms": ..., "violation_rate": ...}

    @field_validator("paper")
    @classmethod
    def _paper(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Only the runner's policies, and only the figures the report prints beside them."""
        from replay.runner import POLICIES  # imports this module

        bad = []
        for name, figures in v.items():
            if name not in POLICIES:
                bad.append(KeyProblem(name, f"no such policy; the runner's: {', '.join(POLICIES)}"))
                continue
            for key, x in figures.items():
                if key not in PAPER_FIGURES:
                    bad.append(
                        KeyProblem(f"{name}.{key}", f"unknown figure; the report prints {', '.join(PAPER_FIGURES)}")
                    )
                elif not 0 <= x <= PAPER_FIGURES[key]:
                    bad.append(KeyProblem(f"{name}.{key}", f"must lie in 0-{PAPER_FIGURES[key]:.10g} (got {x!r})"))
        if bad:
            raise KeyProblems(bad)
        return v


class ScenarioConfig(_Strict):
    scenario: ScenarioMeta
    policy: dict[str, Any] = {}  # fsm.spec.Policy field overrides
    hosts: list[HostConfig] = Field(min_length=1)


# -- the validated, resolved scenario ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HostModel:
    name: str
    spec: HostSpec  # levers all on; the runner switches them per policy
    layouts: dict[str, tuple[Slot, ...]]
    models: dict[str, GpuModel]
    tenants: dict[str, TenantConfig]
    base_dir: Path  # for relative trace paths
    # PCIe is full duplex: (node id, "up" | "down") -> bytes/s of that node's uplink in that direction.
    capacity: dict[tuple[str, str], float] = field(default_factory=dict)
    # The host's PCIe tree, which the simulator's physics runs on; spec.topology is what the
    # controller sees of it ([scenario.signals] topology). None: the same.
    physical: Topology | None = None

    @property
    def topology(self) -> Topology:
        return self.physical if self.physical is not None else self.spec.topology


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file: str
    meta: ScenarioMeta
    hosts: tuple[HostModel, ...]


def cpu_list(text: str) -> tuple[int, ...]:
    """A Linux CPU list ("0-23,48-71") as CPU numbers."""
    return _cpus(text)


# The bound of the daemon's topology readers (controller/topology.py MAX_CPUS, which replay may not
# import): far above any host (Linux's NR_CPUS tops out at 8192). "0-4000000000" was a MemoryError.
MAX_CPUS = 65536


def _cpus(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)  # ASCII digits (\d took "١")
        if not m:
            raise ValueError(f"bad CPU list {text[:40]!r}: expected e.g. 0-23,48-71")
        big = next((g for g in m.groups() if g is not None and (len(g) > 6 or int(g) >= MAX_CPUS)), None)
        if big is not None:  # at most 6 digits before int(): int() of 5,000 digits raises its own error
            raise ValueError(f"CPU {big[:20]} in {part[:40]!r}: CPU numbers go up to {MAX_CPUS - 1}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"bad CPU range {part!r}: the first CPU is past the last")
        out.extend(range(a, b + 1))
        if len(out) > MAX_CPUS:  # each range is bounded, their number is not
            raise ValueError(f"more than {MAX_CPUS} CPUs in {text[:40]!r}...")
    return tuple(out)


# io_share_tier as the daemon's config spells it (controller/config.py PolicyConfig; a test keeps
# the two equal), or as the tier's number (fsm.topology.Tier: 1 switch ... 4 system).
TIERS = {"switch": Tier.SWITCH, "root_complex": Tier.ROOT_COMPLEX, "numa": Tier.NUMA, "system": Tier.SYSTEM}


def policy_overrides(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """A [policy] table (a scenario's, a canary's policy file) as Policy field values: the keys the
    config spells its own way turned into the Policy's (io_share_tier "numa" -> Tier.NUMA,
    mig_ladder's lists -> tuples), each checked as the config checks it. ValueError naming
    `where`.KEY otherwise; policy_from then checks the ranges."""
    known = set(Policy.__dataclass_fields__)
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{where}: unknown policy key(s) {', '.join(bad)}")
    if "enforce" in overrides:  # `enforce = false` made "full" a dry run that printed figures
        raise ValueError(
            f"{where}.enforce: not a [policy] key here: the runner sets it per policy (every policy of a"
            " replay applies its decisions, a shadow replay none; `tailguard run --simulate --dry-run` for a"
            " dry run); leave it out"
        )
    out = dict(overrides)
    if "mig_ladder" in out:  # an unknown profile ended a run in KeyError at its first resize
        try:
            out["mig_ladder"] = {k: tuple(v) for k, v in checked_ladder(out["mig_ladder"]).items()}
        except ValueError as e:
            raise ValueError(f"{where}.mig_ladder: {e}") from None
    if "io_share_tier" in out:
        v = out["io_share_tier"]
        if isinstance(v, str) and v in TIERS:
            out["io_share_tier"] = TIERS[v]
        elif isinstance(v, int) and not isinstance(v, bool) and v in set(TIERS.values()):
            out["io_share_tier"] = Tier(v)
        else:
            names = ", ".join(f'"{k}" ({int(t)})' for k, t in TIERS.items())
            raise ValueError(f"{where}.io_share_tier: expected one of {names}, got {v!r}")
    return out


def policy_from(overrides: dict[str, Any], where: str) -> Policy:
    overrides = policy_overrides(overrides, where)
    for k, v in overrides.items():
        default = getattr(Policy(), k)
        if isinstance(default, bool) != isinstance(v, bool) or not isinstance(v, type(default) | int | float):
            raise ValueError(f"{where}.{k}: expected {type(default).__name__}, got {v!r}")
    try:
        policy = Policy(**overrides)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None
    bad = policy_problems(policy)
    if bad:  # y_windows = 0 or sm_busy = 0 would end a run in ZeroDivisionError
        raise ValueError("; ".join(f"{where}.{p}" for p in bad))
    return policy


# What each kind of node may hang off: kinds nest host > numa > root_complex > switch* > device. A
# level may be skipped, as the daemon's topology readers skip it (a device alone on its root port
# hangs off its NUMA node: controller/topology.py), and `scenario from-trace` writes their trees.
_PARENT_KINDS = {
    "numa": ("host",),
    "root_complex": ("host", "numa"),
    "switch": ("host", "numa", "root_complex", "switch"),
    "gpu": ("host", "numa", "root_complex", "switch"),
    "nvme": ("host", "numa", "root_complex", "switch"),
    "nic": ("host", "numa", "root_complex", "switch"),
}
_DEVICE_KINDS = ("gpu", "nvme", "nic")  # what a flow may end at (or `cpu`)


def _resolve_host(h: HostConfig, i: int, file: str, problems: list[str]) -> list[HostModel]:
    where = f"hosts[{i}]({h.name})"
    nodes: list[Node] = [Node(HOST_ID, NodeKind.HOST, None)]
    ids = {HOST_ID}
    kinds = {HOST_ID: "host"}
    numa_at: dict[int, str] = {}  # numa index -> node id
    alias_of: dict[str, str] = {}  # alias -> node id
    layouts: dict[str, tuple[Slot, ...]] = {}
    models: dict[str, GpuModel] = {}
    capacity: dict[tuple[str, str], float] = {}
    for j, n in enumerate(h.nodes):
        nw = f"{where}.nodes[{j}]({n.id})"
        if n.id in ids or n.id == CPU:
            problems.append(f"{nw}.id: duplicate or reserved node id {n.id!r}")
            continue
        parent = n.parent if n.kind != "numa" else (n.parent or HOST_ID)
        if parent is None:
            problems.append(f"{nw}.parent: a {n.kind} needs a parent")
            continue
        if parent not in ids:
            problems.append(f"{nw}.parent: unknown node {parent!r} (parents must come first)")
            continue
        if kinds[parent] not in _PARENT_KINDS[n.kind]:
            problems.append(
                f"{nw}.parent: a {kinds[parent]} ({parent!r}): a {n.kind} hangs off a "
                f"{' or '.join(_PARENT_KINDS[n.kind]).replace(' or ', ', ', len(_PARENT_KINDS[n.kind]) - 2)}"
                " (kinds nest host > numa > root_complex > switch > device)"
            )  # kept in the tree all the same: what refers to it is not refused for it
        if n.kind == "numa" and n.index is not None:
            if n.index in numa_at:
                problems.append(f"{nw}.index: NUMA node {n.index} is {numa_at[n.index]!r} already")
            numa_at.setdefault(n.index, n.id)
        for k, a in enumerate(n.aliases):
            other = alias_of.get(a, a if a in ids else None)
            if other is not None and other != n.id:
                problems.append(f"{nw}.aliases[{k}]: {a!r} already names node {other!r}")
            alias_of.setdefault(a, n.id)
        cpus: tuple[int, ...] = ()
        if n.cpus:
            try:
                cpus = _cpus(n.cpus)
            except ValueError as e:
                problems.append(f"{nw}.cpus: {e}")
        if n.kind == "numa" and n.index is None:
            problems.append(f"{nw}.index: a numa node needs its index")
        if n.kind == "gpu":
            if n.model is None:
                problems.append(f"{nw}.model: a gpu needs its model")
                continue
            try:
                model = model_by_name(n.model)
            except KeyError as e:
                problems.append(f"{nw}.model: {e.args[0]}")
                continue
            models[n.id] = model
            slots: list[Slot] = []
            for k, text in enumerate(n.layout or []):
                try:
                    s = Slot.parse(text)
                except ValueError as e:
                    problems.append(f"{nw}.layout[{k}]: {e}")
                    continue
                if not model.has_profile(s.profile):
                    problems.append(f"{nw}.layout[{k}]: GPU model {model.key} has no MIG profile {s.profile!r}")
                    continue
                slots.append(s)
            for p in layout_problems(model, slots):
                problems.append(f"{nw}.layout: {p}")
            layouts[n.id] = tuple(sorted(slots))
        elif n.model is not None or n.layout is not None:
            problems.append(f"{nw}: model and layout are for gpu nodes only")
        link = n.link_gbps * 1e9 if n.link_gbps is not None else None
        if link is None and (n.up_gbps is not None or n.down_gbps is not None or n.duplex_gbps is not None):
            problems.append(f"{nw}.link_gbps: up_gbps / down_gbps / duplex_gbps refine link_gbps, which is missing")
        elif link is not None:
            up = capacity[(n.id, "up")] = n.up_gbps * 1e9 if n.up_gbps is not None else link
            down = capacity[(n.id, "down")] = n.down_gbps * 1e9 if n.down_gbps is not None else link
            if n.duplex_gbps is not None:
                both = n.duplex_gbps * 1e9
                if not max(up, down) <= both <= up + down:
                    problems.append(
                        f"{nw}.duplex_gbps: {n.duplex_gbps:g} must lie between the larger direction "
                        f"({max(up, down) / 1e9:g}) and both together ({(up + down) / 1e9:g})"
                    )
                capacity[(n.id, "both")] = both
        kind = NodeKind(n.kind)
        nodes.append(
            Node(
                n.id,
                kind,
                parent,
                link_bps=link,
                numa=n.index if kind is NodeKind.NUMA else None,
                cpus=cpus,
                bdf=n.bdf,
                model=models[n.id].key if n.id in models else None,
                aliases=tuple(n.aliases),
            )
        )
        ids.add(n.id)
        kinds[n.id] = n.kind
    for nid in kinds:
        if alias_of.get(nid, nid) != nid:  # an alias given before the node of that id
            problems.append(f"{where}.nodes: node id {nid!r} is also an alias of node {alias_of[nid]!r}")
    try:
        topo = Topology(tuple(nodes))
    except ValueError as e:
        problems.append(f"{where}.nodes: {e}")
        return []
    tenants: dict[str, TenantSpec] = {}
    used: dict[InstanceRef, str] = {}
    for j, t in enumerate(h.tenants):
        tw = f"{where}.tenants[{j}]({t.name})"
        if t.name in tenants:
            problems.append(f"{tw}.name: duplicate tenant name")
            continue
        inst = None
        if t.instance is not None:
            try:
                inst = InstanceRef.parse(t.instance)
            except ValueError as e:
                problems.append(f"{tw}.instance: {e}")
            if inst is not None:
                if inst.gpu not in models:
                    problems.append(f"{tw}.instance: no gpu {inst.gpu!r} on this host")
                elif not models[inst.gpu].has_profile(inst.profile):
                    problems.append(
                        f"{tw}.instance: GPU model {models[inst.gpu].key} has no MIG profile {inst.profile!r}"
                    )
                elif inst.slot not in layouts.get(inst.gpu, ()):
                    problems.append(f"{tw}.instance: {inst.slot} is not in {inst.gpu}'s layout")
                elif inst in used:
                    problems.append(f"{tw}.instance: {inst} is already {used[inst]}'s")
                else:
                    used[inst] = t.name
                    _check_kv(t.requests, models[inst.gpu], inst.profile, f"{tw}.requests", problems)
        for k, f in enumerate(t.flows):
            _check_flow(f, topo, f"{tw}.flows[{k}].path", problems)
        for r, rr in enumerate(t.reroute):
            for k, f in enumerate(rr.flows):
                _check_flow(f, topo, f"{tw}.reroute[{r}].flows[{k}].path", problems)
        for k, d in enumerate(t.devices):
            if not topo.has(d):
                problems.append(f"{tw}.devices[{k}]: unknown device {d!r}")
            elif (dkind := topo.node(d).kind.value) not in _DEVICE_KINDS:
                problems.append(f"{tw}.devices[{k}]: {d!r} is a {dkind}, not a device (gpu, nvme, nic)")
        if t.cpus is not None:
            _check_cpus(t.cpus, topo, f"{tw}.cpus", problems)
        tenants[t.name] = TenantSpec(
            name=t.name,
            role=t.role,
            cgroup=t.cgroup,
            gpu=inst.gpu if inst else None,
            instance=inst,
            slo_s=t.slo_ms / 1000.0 if t.slo_ms is not None else None,
            quantile=t.quantile,
            devices=tuple(t.devices),
            mps=t.mps,
        )
    out = []
    for c in range(h.copies):
        name = h.name if h.copies == 1 else f"{h.name}-{c}"
        if c == h.copies - 1 and not NAME_PATTERN.match(name):  # the copies' names too: p4d-63
            problems.append(f"{where}.name: with copies = {h.copies}, {name!r}: {NAME_RULE}")
            return []
        spec = HostSpec(topo, tenants, Policy(), {g: m.key for g, m in models.items()})
        out.append(
            HostModel(
                name,
                spec,
                dict(layouts),
                dict(models),
                {t.name: t for t in h.tenants},
                Path(file).parent,
                dict(capacity),
            )
        )
    return out


def _check_flow(f: FlowConfig, topo: Topology, where: str, problems: list[str]) -> None:
    """A flow runs between two devices, or a device and host memory (`cpu`)."""
    ends = []
    for end in f.path:
        if end == CPU:
            ends.append(CPU)
            continue
        if not topo.has(end):
            problems.append(f"{where}: unknown device {end!r}")
            return
        node = topo.node(end)
        if node.kind.value not in _DEVICE_KINDS:
            problems.append(f"{where}: {end!r} is a {node.kind.value}: a flow ends at a device (gpu, nvme, nic) or cpu")
            return
        ends.append(node.id)
    if ends[0] == ends[1]:
        what = "host memory at both ends" if ends[0] == CPU else f"{f.path[0]!r} at both ends"
        problems.append(f"{where}: {what}: a flow runs between two devices, or a device and cpu")


def kv_fits(req: Requests | None, model: GpuModel, profile: str) -> bool:
    """Whether the KV cache has room for one block on an instance of `profile` (vLLM starts)."""
    if req is None or req.kv_bytes_per_token <= 0:
        return True
    mem = model.profile(profile).gib * 2**30 * req.gpu_memory_utilization
    return mem - (req.weights_gb + req.overhead_gb) * 1e9 >= req.kv_bytes_per_token * req.kv_block_tokens


def _check_cpus(text: str, topo: Topology, where: str, problems: list[str]) -> None:
    try:
        cpus = _cpus(text)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return
    if not cpus:
        problems.append(f"{where}: no CPUs")
        return
    host = {c for n in topo.of_kind(NodeKind.NUMA) for c in n.cpus}
    stray = sorted(set(cpus) - host) if host else []
    if stray:
        problems.append(f"{where}: CPU {stray[0]} is on no NUMA node of this host")


def _check_kv(req: Requests | None, model: GpuModel, profile: str, where: str, problems: list[str]) -> None:
    """The KV cache must have room on the tenant's home instance (vLLM would not start otherwise)."""
    if req is None or kv_fits(req, model, profile):
        return
    mem = model.profile(profile).gib * 2**30 * req.gpu_memory_utilization
    problems.append(
        f"{where}.weights_gb: weights_gb + overhead_gb = {req.weights_gb + req.overhead_gb:g} GB leave no KV "
        f"cache on {profile} ({mem / 1e9:.1f} GB at gpu_memory_utilization {req.gpu_memory_utilization:g})"
    )


def parse_scenario(text: str, file: str) -> Scenario:
    try:
        data = loads_toml(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(file, [f"TOML syntax: {e}"]) from None
    return scenario_from_data(data, file)


def scenario_from_data(data: dict[str, Any], file: str) -> Scenario:
    """A scenario from its TOML tables (`file` names it in errors and anchors relative traces)."""
    try:
        cfg = ScenarioConfig.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(file, problems_of(e, data)) from None
    problems = []
    try:
        policy_from(cfg.policy, "policy")
    except ValueError as e:
        problems.append(str(e))
    hosts: list[HostModel] = []
    for i, h in enumerate(cfg.hosts):
        hosts.extend(_resolve_host(h, i, file, problems))
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        problems.append("hosts: host names must be unique")
    for i, h in enumerate(cfg.hosts):
        for j, t in enumerate(h.tenants):
            if t.requests is not None and t.requests.trace is not None:
                p = resolve_data(t.requests.trace, Path(file).parent)
                key = f"hosts[{i}]({h.name}).tenants[{j}]({t.name}).requests.trace"
                if p is None:
                    problems.append(f"{key}: {_trace_missing(t.requests.trace, Path(file).parent)}")
                    continue
                # Read now (cached for the runs): a bad row found in a worker would end the replay
                # in a traceback, after the other runs' work.
                from replay.arrivals import load_request_trace  # imports this module

                try:
                    load_request_trace(str(p))
                except ValueError as e:
                    problems.append(f"{key}: {e}")
    if problems:
        raise ScenarioError(file, problems)
    policy = policy_from(cfg.policy, "policy")
    view = cfg.scenario.signals.topology
    hosts = [
        replace(
            h,
            spec=replace(
                h.spec,
                policy=policy,
                tenants=_outages(h, cfg.scenario),
                topology=controller_view(h.spec.topology, view),
            ),
            physical=h.spec.topology,
        )
        for h in hosts
    ]
    return Scenario(cfg.scenario.name, file, cfg.scenario, tuple(hosts))


def _outages(h: HostModel, meta: ScenarioMeta) -> dict[str, TenantSpec]:
    """What a move costs each tenant in this simulator, told to the decision core in the same terms
    (the simulator charges fsm.outage.move_timeline with the same figures)."""
    out = {}
    for name, ts in h.spec.tenants.items():
        cfg = h.tenants[name]
        out[name] = replace(
            ts,
            relaunch_s=cfg.relaunch_s if cfg.relaunch_s is not None else meta.relaunch_s,
            reconfig_s=meta.reconfig_s,
            handover=cfg.handover or meta.handover,
            handover_gap_s=meta.handover_gap_s,
        )
    return out


def resolve_data(name: str, base: Path) -> Path | None:
    for cand in (base / name, DATA_DIR / name, DATA_DIR / Path(name).name):
        try:
            if cand.is_file():
                return cand
        except OSError:  # a name too long, a directory this user may not search: not found here
            continue
    return None


def _trace_missing(name: str, base: Path) -> str:
    """Why resolve_data found no file: what the first candidate there is, or that none is."""
    for cand in (base / name, DATA_DIR / name, DATA_DIR / Path(name).name):
        what = not_a_file(cand)
        if what is not None:  # /tmp, /dev/null: said so, not "no such file"
            return f"{cand}: {what}, not a file"
    return "no such file"


def bundled() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def suite() -> list[Scenario]:
    """The bundled scenarios that set suite_duration_s, by name."""
    out = [load_scenario(n) for n in bundled()]
    return [s for s in out if s.meta.suite_duration_s is not None]


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name (paper-p4d) or a TOML file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = SCENARIO_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ScenarioError(
                name_or_path, [f"no such scenario; bundled: {', '.join(bundled())}, or give a .toml path"]
            )
    try:
        text = read_small_text(p)
    except OSError as e:
        raise ScenarioError(str(p), [f"cannot read: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ScenarioError(str(p), [f"not UTF-8 text: {e}"]) from None
    return parse_scenario(text, str(p))
