"""The scenario file's format (TOML): pydantic models of its tables, [scenario], [policy] and the
hosts with their nodes and tenants, each checked for its shape and ranges (every key is documented in
docs/scenarios.md). What refers to what across tables is checked when a host is resolved
(replay/scenario_host.py); replay/scenario.py loads a file through both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fsm.outage import DEFAULT_HANDOVER_GAP_S, DEFAULT_RECONFIG_S, DEFAULT_RELAUNCH_S
from fsm.spec import Role
from replay.fidelity import MAX_DURATION_S, STRICT, ActuationFidelity, OwnRestarts, SignalFidelity
from replay.request_traces import MAX_CONTEXT_TOKENS, MAX_GENERATED_TOKENS
from schema.names import Name
from schema.problems import KeyProblem, KeyProblems

CPU = "cpu"  # path endpoint: host memory (the NUMA node of the other end)
# Realistic bounds on the per-request and per-link figures (compute_ms = 1e300 overflowed numpy and
# printed a table of '-', a link of 1e-300 GB/s the same): far beyond any real one, far inside a float.
MAX_REQUEST_MS = 3_600_000.0  # an hour of GPU or CPU time for one request (or one engine step)
MAX_MS_PER_TOKEN = 1000.0  # a second per token on one slice: a GPU prefills thousands a second
MAX_REQUEST_BYTES = 1e12  # 1 TB moved by one request: more than any GPU's memory (192 GB)
MAX_BYTES_PER_TOKEN = 1e9  # 1 GB per token: a KV entry of the largest models is a few MB
MIN_LINK_GBPS = 0.001  # 1 MB/s: far below any PCIe link (Gen1 x1 is 0.25 GB/s)
MAX_LINK_GBPS = 10_000.0  # 10 TB/s: above NVLink 5's 1.8 TB/s, PCIe 7 x16's 242 GB/s
MAX_MEMORY_GB = 10_000.0  # weights or overhead of one server: 10 TB, past any GPU's memory


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
    # a request trace (replay/request_traces.py: Azure, BurstGPT, Mooncake, Qwen-Bailian), relative to the file
    trace: str | None = Field(None, min_length=1)
    trace_speed: float = Field(1.0, gt=0, le=10_000)  # replay the trace this many times faster
    # Seconds its server had served before the run (and the controller) began: its latency
    # source's counters hold those requests at the first scrape (TenantSample.served_total)
    uptime_s: float = Field(0.0, ge=0, le=MAX_DURATION_S)
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
        from replay.runner import POLICIES  # imports replay.scenario, which imports this module

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
