"""The lab's settings for how a real host differs from the model's exact figures ([scenario.signals],
[scenario.actuation], [scenario.restarts]; docs/scenarios.md): its signals, its actuators, its
tenants' own restarts. All off by default but the scrapes a move refuses (move_scrapes)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from replay.topology_view import TopologyView

# The longest simulated run (and the longest MMPP state): a month of 2 s ticks is 1.3 million, hours
# of work; 1e12 s was a run that never ended.
MAX_DURATION_S = 31 * 86400.0


# Every scenario table: unknown keys refused, values frozen, and no inf or nan: trace_speed = inf
# made the trace's cycle 0 (ZeroDivisionError mid-run), rate = inf a Poisson draw numpy refuses
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SignalFidelity(BaseModel):
    """How much worse than the model's own figures a real host's signals are (all off by default:
    the controller sees the model's exact figures). docs/scenarios.md, "Signals as a host gives
    them"."""

    model_config = STRICT

    dcgm: bool = True  # False: no DCGM on the host, so no SM or DRAM activity, per GPU or per instance
    # Without NVML's cumulative PCIe counters the sampler falls back to one 20 ms sample per read,
    # not the tick's average: each GPU's TX and RX read times a mean-1 lognormal factor of this
    # coefficient of variation, drawn per tick
    pcie_noise_cv: float = Field(0.0, ge=0, le=3)
    # The share of ticks whose latency scrape fails (a timeout, a restarting exporter): that tick
    # has no window, and the next one holds both ticks' requests (the histogram's counters run on)
    latency_dropout: float = Field(0.0, ge=0, lt=1)
    # The share of ticks that run past their period (a sampler at its timeout, a slow nvidia-smi):
    # the daemon skips the slots missed (controller/daemon.py), so the next observation comes 2-4
    # periods after it and covers them all
    tick_overruns: float = Field(0.0, ge=0, lt=1)
    # A move or resize of tailguard's restarts the tenant's server as its own restarts do: its
    # metrics endpoint refuses scrapes while it is down, what the old process served since the
    # last scrape is lost with it, and the new one's counters start from zero (the live sampler
    # reports the restart). False: the model's older view, empty windows while it is down and the
    # counters running on
    move_scrapes: bool = True
    # dcgm-exporter collects DCGM's fields once an interval (its -c / DCGM_EXPORTER_INTERVAL: 30 s
    # by default) and serves the last collection to every scrape in between: SM and DRAM activity,
    # per GPU and per MIG instance, up to this old. 0: collected at every tick
    dcgm_interval_s: float = Field(0.0, ge=0, le=300)
    # The PCIe tree the controller sees (replay/topology_view.py): "exact", the host's; "one-root",
    # every device behind one root complex; "apart", every device on a root complex of its own, as
    # a VM's passed-through devices show. The simulator's physics keeps the host's
    topology: TopologyView = "exact"

    @property
    def degraded(self) -> bool:
        return not self.dcgm or self.pcie_noise_cv > 0 or self.latency_dropout > 0 or self.tick_overruns > 0


class ActuationFidelity(BaseModel):
    """How a real host's actuators differ from the figures the controller is configured with (all
    off by default: every move and reconfiguration takes exactly its configured time and succeeds).
    docs/scenarios.md, "Actuators as a host has them"."""

    model_config = STRICT

    # The host's relaunch and MIG reconfiguration over the configured ones (`relaunch_s`,
    # `reconfig_s`): an operator's figure is a guess, a model's load time depends on the page cache
    relaunch_factor: float = Field(1.0, ge=0.1, le=10)
    reconfig_factor: float = Field(1.0, ge=0.1, le=10)
    # Each operation's relaunch and reconfiguration also times a mean-1 lognormal factor of this CV
    outage_cv: float = Field(0.0, ge=0, le=2)
    # The share of moves whose new copy never gets ready (a restart move then relaunches the tenant
    # on its old instance, an outage for nothing; a warm one keeps the old copy serving)
    move_failures: float = Field(0.0, ge=0, le=1)
    # The share of MIG reconfigurations nvidia-smi refuses up front ("In use by another client": a
    # process outside tailguard's tenants holds the GPU); nothing changes
    reconfig_refusals: float = Field(0.0, ge=0, le=1)
    # The launchers' readiness wait (`launcher.readiness_timeout_s`, 120 s by default), for each
    # tenant at least twice its configured relaunch_s (what check-config asks of an operator): a
    # relaunch past it fails the move, a copy that never gets ready is given up at it. None: waits
    # as long as a relaunch takes.
    readiness_timeout_s: float | None = Field(None, gt=0, le=3600)
    # The share of those copies that never get ready that exit while they load (out of memory, a
    # bad argument) rather than hang, and that the launcher sees exit (a systemd unit turning
    # "failed": actuators/moves.py gives up on it at its next check, 2 s); the rest hang until the
    # readiness wait. 0: every one hangs, as a command launcher must take them
    failed_exits: float = Field(0.0, ge=0, le=1)
    # The share of a tenant's block-device writes that are buffered, which cgroup v1's blkio
    # controller neither throttles nor charges to the tenant: the kernel's flusher threads issue
    # them from the root group (Red Hat KB 3726711; docs/actuators.md). An I/O cap on the tenant's
    # writes then holds only the rest, and its io stats show only the rest. 0: cgroup v2 (which
    # charges writeback to the group that dirtied the pages), or direct I/O
    cap_leak: float = Field(0.0, ge=0, lt=1)

    def readiness_wait(self, relaunch_s: float) -> float | None:
        """A tenant's readiness wait, for its configured relaunch."""
        t = self.readiness_timeout_s
        return None if t is None else max(t, 2.0 * relaunch_s)

    @property
    def degraded(self) -> bool:
        return (
            self.readiness_timeout_s is not None
            or self.relaunch_factor != 1.0
            or self.reconfig_factor != 1.0
            or self.outage_cv > 0
            or self.move_failures > 0
            or self.reconfig_refusals > 0
            or self.cap_leak > 0
        )


class OwnRestarts(BaseModel):
    """Restarts of a sensitive tenant that are not tailguard's: a deploy, an out-of-memory kill, a
    crash that systemd restarts. The tenant serves nothing for its relaunch, whatever the policy
    does, and what arrived meanwhile waits (off by default). docs/scenarios.md, "A tenant's own
    restarts"."""

    model_config = STRICT

    # The mean seconds between one sensitive tenant's own restarts (a Poisson process per tenant,
    # from a generator of its own: static and full meet the same ones). None: never. At least 1 s
    # and at least the scenario's tick_s (ScenarioMeta checks that): restarts are drawn one by one
    # at tick resolution, and 1e-6 s was a MemoryError, 1e-300 s a loop that never ended
    every_s: float | None = Field(None, ge=1, le=MAX_DURATION_S)
    # How long each keeps the tenant down. None: its relaunch as the host has it (the tenant's
    # relaunch_s times [scenario.actuation] relaunch_factor)
    outage_s: float | None = Field(None, ge=0, le=3600)


# The figures a [scenario.paper.POLICY] table may give (the report prints them), and their bounds.
