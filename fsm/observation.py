"""What the controller sees in one tick. Pure data, produced by the samplers or the simulator.

Conventions: times in seconds, rates in bytes/s, latencies in seconds, utilisations in [0, 1].
A value that could not be read is None and the source's reason is in `Observation.unavailable`;
it is never filled with zero. `fsm.sanitize` turns NaN / negative / infinite values into None and
counts the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fsm.mig import Slot


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """A MIG instance by GPU and placement (GI ids are the driver's business, not the policy's)."""

    gpu: str
    profile: str
    start: int

    def __str__(self) -> str:
        return f"{self.gpu}/{self.profile}@{self.start}"

    @property
    def slot(self) -> Slot:
        return Slot(self.start, self.profile)

    @staticmethod
    def parse(text: str) -> InstanceRef:
        gpu, sep, rest = text.partition("/")
        if not sep or not gpu:
            raise ValueError(f"bad MIG instance {text!r}: expected GPU/PROFILE@START, e.g. gpu0/3g.20gb@4")
        slot = Slot.parse(rest)
        return InstanceRef(gpu, slot.profile, slot.start)


@dataclass(frozen=True, slots=True)
class LatencyWindow:
    """Latencies of the requests completed in one window (seconds).

    `count` requests completed; `over_slo` of them took longer than the tenant's SLO, when the
    source can tell: exact from raw samples, MQTT or JSON-lines records; estimated (and then
    possibly fractional) from a cumulative histogram's buckets around the SLO. None: unknown.
    """

    count: int
    p50: float | None = None
    p99: float | None = None
    p999: float | None = None
    samples: tuple[float, ...] = ()  # raw samples when the source has them
    over_slo: float | None = None
    # When over_slo is interpolated inside a histogram bucket: (requests certainly over the SLO,
    # those possibly over), counted above the bucket bounds on either side of it. None: exact.
    over_slo_range: tuple[float, float] | None = None
    # ... and the bounds (s) of the bucket the SLO falls inside, which those two counts sit above:
    # the evidence fits the tail's decay between them (fsm.histogram.tail_fraction).
    over_slo_bucket: tuple[float, float] | None = None

    @property
    def median(self) -> float | None:
        """The window's median: its p50, or its samples' where the source sent samples only."""
        return self.p50 if self.p50 is not None or not self.samples else self.quantile(0.5)

    def quantile(self, q: float) -> float | None:
        if self.samples:
            from fsm.quantiles import quantile

            return quantile(self.samples, q)
        if abs(q - 0.99) < 1e-9:
            return self.p99
        if abs(q - 0.999) < 1e-9:
            return self.p999
        if abs(q - 0.5) < 1e-9:
            return self.p50
        return None


@dataclass(frozen=True, slots=True)
class IoRate:
    """cgroup I/O of one tenant on one block device, per second."""

    read_bps: float | None = None
    write_bps: float | None = None
    read_iops: float | None = None
    write_iops: float | None = None

    @property
    def total_bps(self) -> float:
        return (self.read_bps or 0.0) + (self.write_bps or 0.0)


@dataclass(frozen=True, slots=True)
class TenantSample:
    latency: LatencyWindow | None = None
    throughput: float | None = None  # work units/s as the tenant reports them (req/s, bytes/s)
    io: Mapping[str, IoRate] | None = None  # device (name or MAJ:MIN) -> rates
    io_pressure: float | None = None  # PSI "some avg10" as a fraction
    cpu_pressure: float | None = None
    instance: InstanceRef | None = None  # where it actually runs now
    pcie_bps: float | None = None  # host<->device bytes/s attributed to it, when known
    outage_s: float | None = None  # its last move's outage as the actuators measured it
    # It restarted since the last observation and tailguard did not restart it, or may not have (a
    # deploy, an out-of-memory kill, a crash: its latency source's counters went back to zero):
    # about the seconds it served nothing (the span of scrapes that failed meanwhile)
    restarted_s: float | None = None
    # Its history before the controller first saw it: the requests its latency source counted since
    # the server started (a histogram's cumulative _count at this scrape, this window's included)
    # and the seconds since it started (process_start_time_seconds). None: not known.
    served_total: float | None = None
    uptime_s: float | None = None


@dataclass(frozen=True, slots=True)
class MigSample:
    sm_active: float | None = None
    dram_active: float | None = None


@dataclass(frozen=True, slots=True)
class GpuSample:
    pcie_tx_bps: float | None = None
    pcie_rx_bps: float | None = None
    pcie_replay_rate: float | None = None  # replays/s
    util: float | None = None
    sm_active: float | None = None
    dram_active: float | None = None
    mig_enabled: bool | None = None
    lost: bool = False
    layout: tuple[Slot, ...] | None = None  # actual MIG layout, None when unknown
    instances: Mapping[str, MigSample] = field(default_factory=dict)  # "profile@start" -> sample

    @property
    def pcie_bps(self) -> float | None:
        if self.pcie_tx_bps is None and self.pcie_rx_bps is None:
            return None
        return (self.pcie_tx_bps or 0.0) + (self.pcie_rx_bps or 0.0)


@dataclass(frozen=True, slots=True)
class HostSample:
    block_bps: Mapping[str, float] = field(default_factory=dict)  # block device -> bytes/s
    nic_bps: Mapping[str, float] = field(default_factory=dict)
    irq_rate: Mapping[int, float] = field(default_factory=dict)  # cpu -> interrupts/s


@dataclass(frozen=True, slots=True)
class Outcome:
    """The reconciler's word on one target: `tenant:NAME`, `gpu:NAME` or `throttle:TENANT`."""

    target: str
    ok: bool
    error: str = ""
    t: float = 0.0
    # A failed move's or MIG change's: the seconds its tenant served nothing for it (0: nothing was
    # stopped, as when nvidia-smi refuses a change; None: not known)
    outage_s: float | None = None


@dataclass(frozen=True, slots=True)
class ActuationStatus:
    in_flight: tuple[str, ...] = ()  # targets with an operation under way
    outcomes: tuple[Outcome, ...] = ()  # finished since the previous tick


@dataclass(frozen=True, slots=True)
class Observation:
    t: float  # seconds; the only clock the decision core knows
    tenants: Mapping[str, TenantSample] = field(default_factory=dict)
    gpus: Mapping[str, GpuSample] = field(default_factory=dict)
    host: HostSample | None = None
    actuation: ActuationStatus = ActuationStatus()
    unavailable: Mapping[str, str] = field(default_factory=dict)  # source -> reason
