"""The host simulator: the same Host interface as the live daemon, driven by a scenario.

Per tick (`tick_s`, or whatever time the daemon lets pass):
- every flow (bulk and compute tenants' transfers, the sensitive tenants' average transfer rate)
  gets its weighted max-min share of the PCIe tree (replay.fabric), per link and direction (PCIe
  is full duplex; replay.paths), capped by its demand and by the throttles in force; that gives
  the bytes each tenant delivers and the GPU PCIe counters;
- a sensitive tenant's transfers (host -> device, and `d2h_share` device -> host) get the share an
  elastic flow would get at that moment beside the others; each request's service time = compute
  time for its instance's slices (slowed by busy neighbours on the same GPU) x lognormal noise +
  bytes / share + its CPU-side time (stretched when other tenants' threads crowd its cores:
  replay.cpu); a prompt of `max_model_len` tokens or more is refused, as vLLM does;
- each instance is a FCFS server: latencies come from the Lindley recursion over the arrivals
  (replay.queueing); or, with `server = "batched"`, a vLLM-style engine that runs steps of
  chunked prefill under a token budget beside the running decodes (replay.batching); the window
  reports the requests that completed in the tick, as the live latency sampler would read them
  from vLLM's TTFT histogram (fsm.histogram), or exactly with `exact_latency`;
- MIG reconfigurations and moves follow fsm.outage's timeline, the one the decision core budgets
  with (replay.actuation): the moved tenant serves nothing from when it stops to when it serves on
  the target; what arrives meanwhile queues and is served there, at the target's slice and share.
  Layout validity is fsm.mig's.

Random draws depend only on (seed, host, tenant, tick), never on the policy, so every policy sees
the same arrivals and noise (common random numbers) and the same seed gives the same run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fsm.desired import DesiredState, MpsLimit, Throttle
from fsm.histogram import VLLM_TTFT_BUCKETS, histogram_quantile, window_from_buckets
from fsm.mig import GpuModel, Slot
from fsm.observation import (
    ActuationStatus,
    GpuSample,
    HostSample,
    InstanceRef,
    IoRate,
    LatencyWindow,
    MigSample,
    Observation,
    Outcome,
    TenantSample,
)
from fsm.spec import HostSpec, Role
from fsm.topology import NodeKind
from replay.actuation import Actuation, MigOp, Move
from replay.arrivals import RequestStream, load_request_trace  # noqa: F401 (load_request_trace: re-exported)
from replay.batching import BatchServer, step_cost
from replay.cpu import CpuModel
from replay.fabric import Flow, max_min
from replay.paths import BOTH, DOWN, UP, LinkDir, flow_links, legs, with_both
from replay.queueing import Array, lindley
from replay.scenario import (
    CPU,
    HostModel,
    Requests,
    Scenario,
    ScenarioMeta,
    TenantConfig,
    cpu_list,
    resolve_data,  # noqa: F401 (re-exported)
)
from replay.signal_view import SignalView

IRQ_BYTES = 256 * 1024  # bytes moved per interrupt, for the crude IRQ-rate model


# -- runtime state -----------------------------------------------------------------------------
@dataclass(slots=True)
class _Sensitive:
    cfg: TenantConfig
    req: Requests
    stream: RequestStream
    free_at: float = 0.0
    pend_done: Array = field(default_factory=lambda: np.empty(0))  # completion times not yet reported
    pend_lat: Array = field(default_factory=lambda: np.empty(0))
    slo_s: float = math.inf
    busy_s: float = 0.0  # compute seconds in the last tick (SM activity)
    rate_bps: float = 0.0
    batch: BatchServer | None = None  # server = "batched": the engine's queue and decodes
    cpu_busy: float = 0.0  # CPU-side seconds per second in the last tick, uncontended (the CPU channel)
    carry: Array = field(default_factory=lambda: np.empty(0))  # latencies of ticks whose scrape failed


@dataclass(slots=True)
class Stats:
    """What the runner reports on; filled while the simulation runs."""

    latencies: list[Array] = field(default_factory=list)  # per tick, all sensitive tenants
    tenant_latencies: dict[str, list[Array]] = field(default_factory=dict)  # the same arrays, per tenant
    # (t, tenant, count, quantile): the window as the controller saw it (the histogram estimate
    # unless exact_latency)
    windows: list[tuple[float, str, int, float]] = field(default_factory=list)
    delivered: dict[str, float] = field(default_factory=dict)  # tenant -> work (bytes, SM-s, requests served)
    admitted: dict[str, int] = field(default_factory=dict)  # sensitive tenant -> requests arrived and not refused
    served: dict[str, int] = field(default_factory=dict)  # sensitive tenant -> requests completed in the run
    rejected: dict[str, int] = field(default_factory=dict)  # tenant -> requests refused (prompt >= max_model_len)
    reconfigs: int = 0
    moves: int = 0
    failed_ops: int = 0
    # (start, tenant, seconds it served nothing, succeeded): every move's outage as the host had it
    outages: list[tuple[float, str, float, bool]] = field(default_factory=list)
    # (start, tenant, seconds it served nothing): the tenants' own restarts (meta.restarts)
    own_restarts: list[tuple[float, str, float]] = field(default_factory=list)


def _inv(share: float) -> float:
    """Seconds per byte at `share` bytes/s (0 for a path with no modelled link)."""
    return 1.0 / share if math.isfinite(share) and share > 0 else 0.0


def _quantiles(sorted_x: Array, qs: tuple[float, ...]) -> list[float]:
    """Type-7 quantiles (numpy's default, same as fsm.quantiles) of an already sorted array."""
    n = sorted_x.size
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        out.append(float(sorted_x[lo] + (sorted_x[hi] - sorted_x[lo]) * (pos - lo)))
    return out


class HostSim(Actuation, SignalView):
    """The synchronous simulation engine of one host (the offline replay drives it directly)."""

    def __init__(
        self, model: HostModel, meta: ScenarioMeta, seed: int, host_index: int = 0, exact_latency: bool = False
    ) -> None:
        self.model = model
        # False: the controller sees each tick's latencies as a live vLLM exports them, a cumulative
        # histogram on vLLM's TTFT buckets read through the live sampler's estimator; True: the
        # idealised view, the raw samples' quantiles and an exact over_slo.
        self.exact_latency = exact_latency
        self._bounds = np.asarray(VLLM_TTFT_BUCKETS)
        self.meta = meta
        self.spec: HostSpec = model.spec
        self.topo = model.topology  # the host's tree (the controller may see another)
        self.models: dict[str, GpuModel] = dict(model.models)
        self.layouts: dict[str, tuple[Slot, ...]] = dict(model.layouts)
        self.instance: dict[str, InstanceRef] = {
            n: t.instance for n, t in model.spec.tenants.items() if t.instance is not None
        }
        self.t = 0.0
        self.ops: list[MigOp] = []  # MIG reconfigurations under way
        self.moves: dict[str, Move] = {}  # tenants on their way to another instance
        self.outcomes: list[Outcome] = []
        self.caps: dict[tuple[str, str], Throttle] = {}
        self.mps: dict[str, MpsLimit] = {}
        self.stats = Stats()
        self.last: Observation | None = None
        self.sensitive: dict[str, _Sensitive] = {}
        # A sensitive tenant's latency source as the live sampler reads it: the requests its
        # counters hold (since its server last started) and when that was (TenantSample.served_total)
        self._counted: dict[str, float] = {}
        self._server_start: dict[str, float] = {}
        self.others: list[TenantConfig] = []
        self.flow_links: dict[str, list[tuple[dict[tuple[str, str], int], str, str]]] = {}  # in force
        # every flow set of every tenant (a rerouted one has several)
        self.route_links: dict[tuple[str, int], list[tuple[dict[tuple[str, str], int], str, str]]] = {}
        # Links whose two directions together are capped (duplex_gbps): their flows also cross BOTH.
        self.both = frozenset(n for (n, way) in model.capacity if way == BOTH)
        for i, (name, cfg) in enumerate(sorted(model.tenants.items())):
            if cfg.requests is not None:
                stream = RequestStream(cfg.requests, model.base_dir, seed, host_index, i, cfg.schedule.peak())
                batch = BatchServer() if cfg.requests.server == "batched" else None
                slo_s = cfg.slo_ms / 1000.0 if cfg.slo_ms else math.inf
                self.sensitive[name] = _Sensitive(cfg, cfg.requests, stream, slo_s=slo_s, batch=batch)
                # Its server's counters at the run's start: the requests of its uptime before it
                # (own generator: the run's arrivals are the same whatever the uptime).
                before = np.random.default_rng([seed, host_index, i, 1])
                self._counted[name] = float(stream.history(cfg.requests.uptime_s, cfg.schedule.active, before))
                self._server_start[name] = -cfg.requests.uptime_s
            else:
                self.others.append(cfg)
                for k, flows in enumerate(cfg.flow_sets()):
                    self.route_links[(name, k)] = [
                        (with_both(flow_links(self.topo, f.path[0], f.path[1]), self.both), f.path[0], f.path[1])
                        for f in flows
                    ]
                self.flow_links[name] = self.route_links[(name, 0)]
        cpusets = {n: cpu_list(c.cpus) for n, c in model.tenants.items() if c.cpus}
        self.cpu = CpuModel(cpusets, set(self.sensitive)) if cpusets else None
        self.stats.rejected = dict.fromkeys(self.sensitive, 0)
        self.cpu_threads: dict[str, float] = {}
        self.capacity: dict[tuple[str, str], float] = dict(model.capacity) or {
            (n.id, way): n.link_bps for n in self.topo.nodes if n.link_bps is not None for way in (UP, DOWN)
        }
        self.gpu_nodes = [n.id for n in self.topo.gpus]
        self.block = {n.id: (n.aliases[0] if n.aliases else n.id) for n in self.topo.of_kind(NodeKind.NVME)}
        self.nics = {n.id: (n.aliases[0] if n.aliases else n.id) for n in self.topo.of_kind(NodeKind.NIC)}
        self.cpus = sorted({c for n in self.topo.of_kind(NodeKind.NUMA) for c in n.cpus})
        # Precomputed per tenant: the devices its flows start or end at (hot path of every tick).
        self.ends: dict[str, list[tuple[str, NodeKind, bool, int | None]]] = {}
        self.route_ends: dict[tuple[str, int], list[tuple[str, NodeKind, bool, int | None]]] = {}
        for key, links in self.route_links.items():
            ends = []
            for _, src, dst in links:
                for end, is_src in ((src, True), (dst, False)):
                    if end != CPU:
                        node = self.topo.node(end)
                        ends.append((node.id, node.kind, is_src, self.topo.numa_of(node.id)))
            self.route_ends[key] = ends
        self.ends = {name: self.route_ends[(name, 0)] for name in self.flow_links}
        self._slice_cache: dict[tuple[str, str], int] = {}
        self._share_cache: dict[tuple[str, str], float] = {}
        self._layout_info: dict[str, tuple[tuple[Slot, ...], list[tuple[str, InstanceRef, float]]]] = {}
        self._idle: dict[str, tuple[tuple[Slot, ...] | None, GpuSample]] = {}
        self._irq: tuple[tuple[tuple[int, float], ...], dict[int, float]] | None = None
        self._elastic: dict[tuple[object, ...], dict[str, float]] = {}
        # Signals as a real host gives them (meta.signals): their draws come from a generator of
        # their own, the same number per tick whatever the policy does, so static and full see the
        # same failed scrapes and noise (common random numbers).
        self._sig_rng = np.random.default_rng([seed, host_index, 0x516]) if meta.signals.degraded else None
        # Actuators as a real host has them (meta.actuation): drawn per operation, in apply order.
        self.act_rng = np.random.default_rng([seed, host_index, 0xAC7]) if meta.actuation.degraded else None
        # Ticks that run late (meta.signals.tick_overruns): a generator of their own, two draws a tick.
        self._tick_rng = np.random.default_rng([seed, host_index, 0x71C]) if meta.signals.tick_overruns > 0 else None
        # The tenants' own restarts (meta.restarts): a generator of their own, drawn only when one
        # comes due, so every policy meets the same ones; the next one's time per sensitive tenant.
        every = meta.restarts.every_s
        self._restart_rng = np.random.default_rng([seed, host_index, 0x5E1F]) if every else None
        self._next_restart: dict[str, float] = {}
        self._restarting: dict[str, float] = {}  # tenant -> when a restart has it serving again
        self._scraped_at: dict[str, float] = {}  # tenant -> its last scrape that answered
        # GPU -> DCGM's figures at the exporter's last collection (meta.signals.dcgm_interval_s)
        self._dcgm_held: dict[str, tuple[float | None, float | None, Mapping[str, MigSample]]] = {}
        self._restarted: dict[str, float] = {}  # tenant -> restarted_s for this tick's observation
        if self._restart_rng is not None and every:
            self._next_restart = {n: float(self._restart_rng.exponential(every)) for n in sorted(self.sensitive)}
        self.measured: dict[str, float] = {}
        self._unobserved_s = 0.0  # the seconds of ticks since the last observed one (tick_overruns)

    # -- one tick ---------------------------------------------------------------------------------
    def _cap(self, name: str, links: list[tuple[dict[tuple[str, str], int], str, str]], t: float) -> float:
        cap = math.inf
        for _, src, dst in links:
            for end, read in ((src, True), (dst, False)):
                if end == CPU:
                    continue
                th = self.caps.get((name, self.topo.resolve(end) or end))
                if th is None or th.expires_at <= t:
                    continue
                lim = th.read_bps if read else th.write_bps
                if lim is not None:
                    # cgroup v1 holds only the writes it charges to the group (meta.actuation.
                    # cap_leak): the buffered rest rides along, so the flow runs at lim / (1 - leak)
                    cap = min(cap, lim if read else lim / (1.0 - self.meta.actuation.cap_leak))
        return cap

    def _mps_factor(self, name: str, t: float) -> float:
        m = self.mps.get(name)
        return m.percent / 100.0 if m is not None and m.expires_at > t else 1.0

    def _slices(self, inst: InstanceRef) -> int:
        key = (inst.gpu, inst.profile)
        n = self._slice_cache.get(key)
        if n is None:
            n = self._slice_cache[key] = self.models[inst.gpu].profile(inst.profile).slices
        return n

    def _share(self, inst: InstanceRef) -> float:
        """The instance's share of its GPU's compute slices (of 7 on A100/H100, of 4 on RTX PRO 6000)."""
        key = (inst.gpu, inst.profile)
        share = self._share_cache.get(key)
        if share is None:
            share = self._share_cache[key] = self._slices(inst) / self.models[inst.gpu].compute_slices
        return share

    def _mem_gib(self, inst: InstanceRef) -> float:
        """The instance's memory as -lgip prints it (what vLLM sees as the device's memory)."""
        return self.models[inst.gpu].profile(inst.profile).gib

    def _instances_of(self, gpu: str, layout: tuple[Slot, ...]) -> list[tuple[str, InstanceRef, float]]:
        cached = self._layout_info.get(gpu)
        if cached is None or cached[0] != layout:
            rows = []
            for slot in layout:
                ref = InstanceRef(gpu, slot.profile, slot.start)
                rows.append((str(slot), ref, self._share(ref)))
            cached = self._layout_info[gpu] = (layout, rows)
        return cached[1]

    def advance(self, dt: float | None = None) -> Observation:
        """Simulate one tick and return what the controller observes of it."""
        obs = self._tick(self.meta.tick_s if dt is None else dt, True)
        assert obs is not None
        return obs

    def skip(self) -> None:
        """Simulate one tick the daemon does not sample (one a late tick skipped: signals.
        tick_overruns): its requests join the next observed window, which then spans both, and
        what it reports (operations that finished) comes with the next observation."""
        self._tick(self.meta.tick_s, False)

    def _tick(self, dt: float, observed: bool) -> Observation | None:
        t0, t1 = self.t, self.t + dt
        self._finish_ops(t0)
        self._hold(t0)
        if self._next_restart:
            self._own_restarts(t1)
        # Demand and SM load of the other tenants this tick.
        sm: dict[str, float] = {}  # tenant -> SM activity of its instance
        flows: list[Flow[LinkDir]] = []
        phases: list[int] = []  # rerouted tenants' flow sets in force (part of the memo key)
        threads = self.cpu_threads = {n: s.cpu_busy for n, s in self.sensitive.items()}  # CPU channel
        for cfg in self.others:
            if cfg.reroute:  # the aggressor's flows take the paths of the phase in force
                phase = cfg.flows_at(t0)
                phases.append(phase)
                self.flow_links[cfg.name] = self.route_links[(cfg.name, phase)]
                self.ends[cfg.name] = self.route_ends[(cfg.name, phase)]
            level = cfg.schedule.active(t0)
            if cfg.cpu_threads:
                threads[cfg.name] = cfg.cpu_threads * level
            f_mps = self._mps_factor(cfg.name, t0)
            sm[cfg.name] = cfg.sm_active * min(1.0, level) * f_mps
            links = self.flow_links[cfg.name]
            if links and cfg.demand_gbps > 0:
                merged: dict[tuple[str, str], int] = {}
                for ln, _, _ in links:
                    for k, m in ln.items():
                        merged[k] = merged.get(k, 0) + m
                demand = cfg.demand_gbps * 1e9 * level
                flows.append(Flow(cfg.name, merged, min(demand, self._cap(cfg.name, links, t0))))
        # Sensitive tenants: average transfer rate (for others' shares) and elastic share (for theirs),
        # one flow per direction: host -> device down the GPU's path, device -> host up it.
        sens_links: dict[str, tuple[tuple[str, ...], float]] = {}
        avg: list[Flow[LinkDir]] = []
        serving = {name: self._serving(name, t1) for name in self.sensitive}
        for name, s in self.sensitive.items():
            path = tuple(self.topo.path_links(serving[name].gpu))
            d2h = s.req.d2h_share
            sens_links[name] = (path, d2h)
            avg.append(Flow(f"{name}>{DOWN}", legs(path, DOWN, self.both), s.rate_bps * (1.0 - d2h)))
            if d2h > 0:
                avg.append(Flow(f"{name}>{UP}", legs(path, UP, self.both), s.rate_bps * d2h))
        rates = max_min(flows + avg, self.capacity)
        # The elastic shares depend only on the other flows' caps and the victims' paths: memoise.
        key = (tuple((f.name, f.cap) for f in flows), tuple(sorted(sens_links.items())), tuple(phases))
        elastic = self._elastic.get(key)
        if elastic is None and self.both:
            # A capped sum couples the directions: each direction's probes beside the other
            # direction's average flows (a request's H2D and D2H copies do not overlap each other).
            elastic = {}
            for way, other in ((DOWN, UP), (UP, DOWN)):
                one_way = [Flow(f"{n}>{way}", legs(path, way, self.both)) for n, (path, _) in sens_links.items()]
                rest = [f for f in avg if f.name.endswith(f">{other}")]
                shares = max_min(flows + rest + one_way, self.capacity)
                elastic.update({f.name: shares[f.name] for f in one_way})
        elif elastic is None:
            probes: list[Flow[LinkDir]] = []
            for n, (path, d2h) in sens_links.items():
                probes.append(Flow(f"{n}>{DOWN}", legs(path, DOWN, self.both)))
                if d2h > 0:
                    probes.append(Flow(f"{n}>{UP}", legs(path, UP, self.both)))
            elastic = max_min(flows + probes, self.capacity)
            if len(self._elastic) < 10_000:
                self._elastic[key] = elastic
        # Requests.
        window: dict[str, LatencyWindow] = {}
        dropped: dict[str, str] = {}  # tenant -> why its scrape failed
        self._restarted = {}
        busy_s: dict[str, float] = {}
        for name, s in self.sensitive.items():
            req = s.req
            level = s.cfg.schedule.active(t0)
            arr, tok, gen, noise = s.stream.window(t0, t1, level)
            if req.max_model_len is not None:  # refused at admission: never queued
                ok = tok < req.max_model_len
                if not ok.all():
                    self.stats.rejected[name] = self.stats.rejected.get(name, 0) + int(ok.size - ok.sum())
                    arr, tok, gen, noise = arr[ok], tok[ok], gen[ok], noise[ok]
            cpu_slow = self.cpu.slowdown(name, threads) if self.cpu is not None else 1.0
            per_byte = self._per_byte(name, req, elastic)
            steps0 = s.batch.step if s.batch is not None else 0
            mv = self.moves.get(name)
            if mv is None or mv.held or mv.down_at >= t1:
                done, lat, busy_s[name], total_bytes = self._serve(
                    s, name, serving[name], arr, tok, gen, noise, per_byte, cpu_slow, sm, t1
                )
            else:  # it stops serving within this tick: what arrived before is served where it was
                j = int(np.searchsorted(arr, mv.down_at, "left"))
                old = self.instance[name]
                old_path = self.topo.path_links(old.gpu)
                probe = [Flow(f"{name}>{w}", legs(old_path, w, self.both)) for w in (DOWN, UP)]
                pb_old = self._per_byte(name, req, max_min(flows + probe, self.capacity))
                parts = [
                    self._serve(s, name, old, arr[:j], tok[:j], gen[:j], noise[:j], pb_old, cpu_slow, sm, mv.down_at)
                ]
                self._hold_one(name, mv)
                parts.append(
                    self._serve(s, name, mv.target, arr[j:], tok[j:], gen[j:], noise[j:], per_byte, cpu_slow, sm, t1)
                )
                done = np.concatenate([p[0] for p in parts])
                lat = np.concatenate([p[1] for p in parts])
                busy_s[name] = sum(p[2] for p in parts)
                total_bytes = sum(p[3] for p in parts)
            if s.batch is None:
                s.cpu_busy = arr.size * req.cpu_ms * 1e-3 / dt
            else:
                s.cpu_busy = (s.batch.step - steps0) * req.step_ms * 1e-3 / dt
            s.rate_bps = total_bytes / dt
            st = self.stats
            st.latencies.append(lat)
            st.tenant_latencies.setdefault(name, []).append(lat)
            st.admitted[name] = st.admitted.get(name, 0) + int(arr.size)
            # FCFS or steps in order: departures are non-decreasing, so the completed ones are a prefix.
            all_done = np.concatenate((s.pend_done, done))
            all_lat = np.concatenate((s.pend_lat, lat))
            cut = int(np.searchsorted(all_done, t1, "left"))
            rep = np.sort(all_lat[:cut])
            s.pend_done, s.pend_lat = all_done[cut:], all_lat[cut:]
            st.served[name] = st.served.get(name, 0) + cut
            st.delivered[name] = st.delivered.get(name, 0.0) + cut  # served, not arrived
            if not observed:
                s.carry = np.concatenate((s.carry, rep))
                continue
            scraped = self._scraped(s, rep)
            back = self._restarting.get(name)
            if back is not None and t1 < back:  # its metrics endpoint is down with it, and what the
                s.carry = np.empty(0)  # old process served since its last scrape died with its counters
                dropped[name] = "scrape failed: connection refused (simulated: the tenant restarting)"
                continue
            if scraped is None:
                dropped[name] = "scrape failed (simulated: signals.latency_dropout)"
                continue  # no window this tick: its requests join the next one's
            if back is not None:
                # The first scrape after it: its counters started again from zero, and the live
                # sampler takes the seconds since its last answered scrape for the outage.
                del self._restarting[name]
                self._restarted[name] = t1 - self._scraped_at.get(name, 0.0)
                self._counted[name], self._server_start[name] = 0.0, back
            self._scraped_at[name] = t1
            self._counted[name] += scraped.size
            window[name], q = self._window(scraped, s.slo_s, s.cfg.quantile)
            st.windows.append((t1, name, int(scraped.size), q))
        for cfg in self.others:
            work = rates.get(cfg.name, 0.0) * dt if cfg.flows else sm[cfg.name] * dt
            self.stats.delivered[cfg.name] = self.stats.delivered.get(cfg.name, 0.0) + work
        self.t = t1
        self._finish_ops(t1)
        # A window's rate is over the seconds since the last observation (a late tick's span).
        span = dt + self._unobserved_s
        if not observed:
            self._unobserved_s = span
            return None
        self._unobserved_s = 0.0
        obs = self._observation(t1, span, dt, flows + avg, rates, sm, busy_s, window, dropped)
        self.last = obs
        return obs

    def _own_restarts(self, t1: float) -> None:
        """Stop the sensitive tenants whose own restart (meta.restarts) comes before t1, at tick
        resolution: the tick's arrivals wait for it as a move's do. A tenant being moved is down
        or about to be, and restarts with the move."""
        assert self._restart_rng is not None
        every = self.meta.restarts.every_s or math.inf
        fid = self.meta.actuation
        for name, at in self._next_restart.items():
            while at < t1:
                s = self.sensitive[name]
                if name not in self.moves:
                    out = self.meta.restarts.outage_s
                    if out is None:
                        out = self.spec.tenants[name].relaunch_s * fid.relaunch_factor
                    s.free_at = max(s.free_at, at) + out
                    self._restarting[name] = max(self._restarting.get(name, 0.0), at + out)
                    self.stats.own_restarts.append((at, name, out))
                at += float(self._restart_rng.exponential(every))
            self._next_restart[name] = at

    @staticmethod
    def _per_byte(name: str, req: Requests, shares: dict[str, float]) -> float:
        """Seconds per byte: the H2D part at the downstream share, the D2H part at the upstream one."""
        d2h = req.d2h_share
        out = (1.0 - d2h) * _inv(shares.get(f"{name}>{DOWN}", math.inf))
        if d2h > 0:
            out += d2h * _inv(shares.get(f"{name}>{UP}", math.inf))
        return out

    def _serve(
        self,
        s: _Sensitive,
        name: str,
        inst: InstanceRef,
        arr: Array,
        tok: Array,
        gen: Array,
        noise: Array,
        per_byte: float,
        cpu_slow: float,
        sm: dict[str, float],
        until: float,
    ) -> tuple[Array, Array, float, float]:
        """Serve these arrivals on `inst`: (completion times, latencies, GPU seconds, bytes moved).
        A batched server runs the steps that start before `until`."""
        req = s.req
        neighbours = sum(
            sm.get(o, 0.0) * self._share(i) for o, i in self.instance.items() if i.gpu == inst.gpu and o != name
        )
        slow = 1.0 + self.meta.compute_coupling * neighbours
        scale = 1e-3 * slow / self._slices(inst) ** req.slice_exponent
        if req.compute_ms_per_token or req.bytes_per_token:
            compute = (req.compute_ms + req.compute_ms_per_token * tok) * scale * noise
            nbytes = req.bytes + req.bytes_per_token * tok
            service = compute + nbytes * per_byte
            total_bytes = float(nbytes.sum())
        else:  # fixed cost per request: scalars, fewer array passes
            compute = (req.compute_ms * scale) * noise
            service = compute + req.bytes * per_byte
            total_bytes = req.bytes * arr.size
        if s.batch is None:
            if req.cpu_ms:
                service = service + req.cpu_ms * 1e-3 * cpu_slow
            lat, s.free_at = lindley(arr, service, s.free_at)
            return arr + lat, lat, float(compute.sum()), total_bytes
        # The engine's steps; requests still queued at `until` finish in a later call.
        s.batch.push(arr, tok, gen, noise)
        cost = step_cost(req, scale, per_byte, self._mem_gib(inst), cpu_slow)
        done, lat, s.free_at, busy = s.batch.run(cost, s.free_at, until)
        return done, lat, busy, total_bytes

    # -- what the samplers would see --------------------------------------------------------------
    def _window(self, rep: Array, slo_s: float, quantile: float) -> tuple[LatencyWindow, float]:
        """The tick's window as the controller sees it, and its `quantile` (NaN when empty)."""
        n = int(rep.size)
        if n == 0:
            return LatencyWindow(0, over_slo=0.0), math.nan
        if self.exact_latency:
            p50, p99, p999, q = _quantiles(rep, (0.5, 0.99, 0.999, quantile))
            over = float(n - int(np.searchsorted(rep, slo_s, "right")))
            return LatencyWindow(n, p50, p99, p999, over_slo=over), q
        # What vLLM's /metrics would show between two scrapes: cumulative counts per `le`.
        cum = np.searchsorted(rep, self._bounds, "right").tolist()
        buckets = [*zip(VLLM_TTFT_BUCKETS, cum, strict=True), (math.inf, n)]
        w = window_from_buckets(buckets, slo_s)
        known = {0.5: w.p50, 0.99: w.p99, 0.999: w.p999}
        qv = known[quantile] if quantile in known else histogram_quantile(quantile, buckets)
        return w, math.nan if qv is None else qv

    def _observation(
        self,
        t: float,
        span: float,
        dt: float,
        flows: list[Flow[LinkDir]],
        rates: dict[str, float],
        sm: dict[str, float],
        busy_s: dict[str, float],
        window: dict[str, LatencyWindow],
        dropped: dict[str, str],
    ) -> Observation:
        topo = self.topo
        tenants: dict[str, TenantSample] = {}
        inst_sm: dict[str, dict[str, float]] = {}  # gpu -> PROFILE@START -> SM activity
        rx: dict[str, float] = {}
        tx: dict[str, float] = {}
        block: dict[str, float] = dict.fromkeys(self.block.values(), 0.0)
        nic: dict[str, float] = dict.fromkeys(self.nics.values(), 0.0)
        numa_bytes: dict[int, float] = {}
        moving = self._down(t)  # a warm move's old copy still serves: its instance is seen
        for name, s in self.sensitive.items():
            inst = self.instance[name]
            down = name in moving
            inst_sm.setdefault(inst.gpu, {})[f"{inst.profile}@{inst.start}"] = (
                0.0 if down else min(1.0, busy_s.get(name, 0.0) / dt)
            )
            lw = window.get(name)
            tenants[name] = TenantSample(
                latency=lw,
                throughput=(lw.count / span if lw else None),
                instance=None if down else inst,
                cpu_pressure=self._cpu_pressure(name, s.cpu_busy),
                outage_s=self.measured.get(name),
                restarted_s=self._restarted.get(name),
                served_total=self._counted[name] if lw is not None else None,
                uptime_s=t - self._server_start[name] if lw is not None else None,
            )
            for n in topo.path_links(inst.gpu)[:1]:  # the GPU receives H2D bytes, transmits D2H ones
                rx[n] = rx.get(n, 0.0) + s.rate_bps * (1.0 - s.req.d2h_share)
                tx[n] = tx.get(n, 0.0) + s.rate_bps * s.req.d2h_share
        for cfg in self.others:
            r = rates.get(cfg.name, 0.0)
            io: dict[str, IoRate] = {}
            for nid, kind, is_src, numa in self.ends[cfg.name]:
                if kind is NodeKind.GPU:
                    side = tx if is_src else rx
                    side[nid] = side.get(nid, 0.0) + r
                elif kind is NodeKind.NVME:
                    dev = self.block[nid]
                    old = io.get(dev)
                    rd = (old.read_bps or 0.0) if old else 0.0
                    wr = (old.write_bps or 0.0) if old else 0.0
                    charged = r * (1.0 - self.meta.actuation.cap_leak)  # v1: buffered writes are root's
                    io[dev] = IoRate(rd + (r if is_src else 0.0), wr + (0.0 if is_src else charged))
                    block[dev] += r
                elif kind is NodeKind.NIC:
                    nic[self.nics[nid]] += r
                if numa is not None:
                    numa_bytes[numa] = numa_bytes.get(numa, 0.0) + r
            home = self.instance.get(cfg.name)
            if home is not None:
                inst_sm.setdefault(home.gpu, {})[f"{home.profile}@{home.start}"] = sm.get(cfg.name, 0.0)
            work = r if cfg.flows else sm.get(cfg.name, 0.0)
            tenants[cfg.name] = TenantSample(
                throughput=work,
                io=io if io else ({} if cfg.cgroup else None),
                instance=home,
                cpu_pressure=self._cpu_pressure(cfg.name),
            )
        gpus: dict[str, GpuSample] = {}
        for gpu in self.gpu_nodes:
            layout = self.layouts.get(gpu)
            busy_reconf = any(op.gpu == gpu for op in self.ops)
            active = inst_sm.get(gpu)
            g_tx, g_rx = tx.get(gpu, 0.0), rx.get(gpu, 0.0)
            idle = not active and g_tx == 0.0 and g_rx == 0.0 and not busy_reconf
            cached = self._idle.get(gpu) if idle else None
            if cached is not None and cached[0] == layout:
                gpus[gpu] = cached[1]  # an idle GPU looks the same every tick: build it once
                continue
            model = self.models.get(gpu)
            instances: dict[str, MigSample] = {}
            total = 0.0
            if layout is not None and model is not None:
                vals = active or {}
                for key, _ref, frac in self._instances_of(gpu, layout):
                    v = vals.get(key, 0.0)
                    instances[key] = MigSample(sm_active=v, dram_active=0.6 * v)
                    total += v * frac
            sample = GpuSample(
                pcie_tx_bps=g_tx,
                pcie_rx_bps=g_rx,
                pcie_replay_rate=0.0,
                util=min(1.0, total * 1.2),
                sm_active=total,
                dram_active=0.6 * total,
                mig_enabled=layout is not None,
                layout=None if busy_reconf else layout,
                instances=instances,
            )
            gpus[gpu] = sample
            if idle:
                self._idle[gpu] = (layout, sample)
        irq_key = tuple(sorted(numa_bytes.items()))
        if self._irq is None or self._irq[0] != irq_key:
            irq: dict[int, float] = {}
            for node in topo.of_kind(NodeKind.NUMA):
                extra = numa_bytes.get(node.numa or 0, 0.0) / IRQ_BYTES / max(1, len(node.cpus))
                for c in node.cpus:
                    irq[c] = self.meta.irq_base + extra
            self._irq = (irq_key, irq)
        irq = self._irq[1]
        in_flight = tuple(sorted([f"gpu:{op.gpu}" for op in self.ops] + [f"tenant:{n}" for n in self.moves]))
        outcomes = tuple(self.outcomes)
        self.outcomes = []
        unavailable = {f"latency:{n}": why for n, why in dropped.items()}
        if self._sig_rng is not None:
            gpus = self._degraded(gpus, unavailable)
        if self.meta.signals.dcgm_interval_s > 0 and self.meta.signals.dcgm:
            gpus = self._dcgm_collected(gpus, t, span)
        return Observation(
            t=t,
            tenants=tenants,
            gpus=gpus,
            host=HostSample(block_bps=block, nic_bps=nic, irq_rate=irq),
            actuation=ActuationStatus(in_flight=in_flight, outcomes=outcomes),
            unavailable=unavailable,
        )

    def _cpu_pressure(self, name: str, busy: float = 0.0) -> float | None:
        """The cgroup's cpu.pressure "some" share; None where the CPU channel is not modelled."""
        return None if self.cpu is None else self.cpu.pressure(name, self.cpu_threads, busy)

    # -- the synchronous fast path ----------------------------------------------------------------
    def observe_sync(self) -> Observation:
        return self.last if self.last is not None else self.advance()

    def step(self, desired: DesiredState | None = None, late: int = 0) -> Observation:
        """Apply `desired` (if any) now, then simulate one tick and return its observation; `late`:
        the next observation comes that many ticks later (overrun), and covers them all."""
        if desired is not None:
            self.apply_sync(desired)
        for _ in range(late):
            self.skip()
        return self.advance()

    def drain(self) -> None:
        """End of a run: serve what batched servers still hold, with no further arrivals, so their
        requests count as FCFS ones do (whose latencies are known when they arrive)."""
        for name, s in self.sensitive.items():
            if s.batch is not None:
                _, lat, s.free_at = s.batch.drain(s.free_at)
                if lat.size:
                    self.stats.latencies.append(lat)
                    self.stats.tenant_latencies.setdefault(name, []).append(lat)

    def level_of_service(self) -> dict[str, str]:
        """Where every tenant runs now (for reports and tests)."""
        return {n: str(i) for n, i in sorted(self.instance.items())}


class SimulatedHost:
    """The controller.host.Host protocol over HostSim, for `tailguard run --simulate`.

    With `speed` the simulated clock runs `speed` times faster than the wall clock and each
    observe() covers the simulated time since the previous one; without it, each observe()
    advances exactly one tick (as fast as the caller asks).
    """

    def __init__(
        self,
        scenario: Scenario,
        host: str | int = 0,
        seed: int | None = None,
        speed: float | None = None,
        spec: HostSpec | None = None,
        exact_latency: bool = False,
    ) -> None:
        idx = host if isinstance(host, int) else [h.name for h in scenario.hosts].index(host)
        model = scenario.hosts[idx]
        seed = scenario.meta.seed if seed is None else seed
        self.sim = HostSim(model, scenario.meta, seed, idx, exact_latency=exact_latency)
        self.spec: HostSpec = spec or model.spec
        self.name = model.name
        self.speed = speed
        self._wall0 = time.monotonic()

    def now(self) -> float:
        if self.speed is None:
            return self.sim.t
        return max(self.sim.t, (time.monotonic() - self._wall0) * self.speed)

    def observe_sync(self) -> Observation:
        if self.speed is None:
            return self.sim.step(late=self.sim.overrun())
        dt = self.now() - self.sim.t
        if dt <= 1e-6:
            return self.sim.observe_sync()
        return self.sim.advance(dt)

    def apply_sync(self, desired: DesiredState) -> None:
        self.sim.apply_sync(desired)

    def step(self, desired: DesiredState | None = None) -> Observation:
        return self.sim.step(desired)

    async def observe(self) -> Observation:
        return self.observe_sync()

    async def apply(self, desired: DesiredState) -> None:
        self.apply_sync(desired)

    async def close(self) -> None:
        return None


def tenant_role(model: HostModel, name: str) -> Role:
    return model.spec.tenants[name].role
