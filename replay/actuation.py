"""What applying a desired state does to the simulated host: throttles and MPS limits at once, MIG
reconfigurations and tenant moves on fsm.outage's timeline (the one the decision core budgets
with), its durations those of the host (meta.actuation: the configured ones times a factor and a
per-operation draw), some refused or failed as a real host's are. HostSim (replay/simulator.py)
mixes this in; the state it works on is HostSim's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fsm.desired import DesiredState, MpsLimit, Throttle
from fsm.mig import GpuModel, Slot, layout_problems, normalise
from fsm.observation import InstanceRef, Outcome
from fsm.outage import EXIT_CHECK_S, MoveKind, move_timeline
from fsm.spec import HostSpec
from fsm.topology import Topology
from replay.scenario import ScenarioMeta

if TYPE_CHECKING:
    from replay.simulator import Stats, _Sensitive


@dataclass(slots=True)
class MigOp:
    """A MIG reconfiguration of one GPU: its new layout exists at `end`."""

    gpu: str
    layout: tuple[Slot, ...]
    start: float
    end: float


@dataclass(slots=True)
class Move:
    """A tenant on its way to `target`: it serves nothing in [down_at, up_at) (fsm.outage's timeline),
    on its old instance before, on the target from up_at."""

    target: InstanceRef
    start: float
    down_at: float
    up_at: float
    held: bool = False  # its server's hold has been applied
    error: str = ""  # a failed move: `target` is the instance it went back to
    measured_s: float | None = None  # the outage the live actuators would record (restart move: the relaunch)
    restarts: bool = True  # a new process serves after it (not: a failed warm move's old copy kept)


class Actuation:
    """Moves, reconfigurations, throttles and MPS limits of HostSim."""

    t: float
    ops: list[MigOp]  # MIG reconfigurations under way
    moves: dict[str, Move]  # tenants on their way to another instance
    outcomes: list[Outcome]
    instance: dict[str, InstanceRef]
    layouts: dict[str, tuple[Slot, ...]]
    models: dict[str, GpuModel]
    caps: dict[tuple[str, str], Throttle]
    mps: dict[str, MpsLimit]
    spec: HostSpec
    meta: ScenarioMeta
    act_rng: np.random.Generator | None  # meta.actuation's draws (None: the configured figures, no failures)
    measured: dict[str, float]  # tenant -> its last move's outage as the live actuators measure it
    topo: Topology
    stats: Stats
    sensitive: dict[str, _Sensitive]
    _restarting: dict[str, float]  # tenant -> when its metrics endpoint answers again

    def _down(self, t: float) -> set[str]:
        """Moving tenants that serve nothing at `t` (a warm move's old copy serves until the switch)."""
        return {n for n, m in self.moves.items() if m.down_at <= t}

    def _serving(self, name: str, t1: float) -> InstanceRef:
        """The instance that serves what arrives before t1: the move's target once the tenant stops
        on its old one (what arrives meanwhile waits for the target, and is served there)."""
        m = self.moves.get(name)
        return m.target if m is not None and m.down_at < t1 else self.instance[name]

    def _hold(self, t: float) -> None:
        """Hold the servers of the tenants that have stopped serving by `t` (a tick's start), for their
        outage; one that stops within a tick is held there (advance splits its arrivals)."""
        for name, m in self.moves.items():
            if not m.held and m.down_at <= t:
                self._hold_one(name, m)

    def _hold_one(self, name: str, m: Move) -> None:
        m.held = True
        s = self.sensitive.get(name)
        if s is not None:  # the work queued then resumes once the tenant serves again
            s.free_at = max(s.free_at, m.down_at) + (m.up_at - m.down_at)
            if m.restarts and self.meta.signals.move_scrapes:  # its endpoint is down with it
                self._restarting[name] = max(self._restarting.get(name, 0.0), m.up_at)

    def _jitter(self) -> float:
        """One operation's mean-1 lognormal factor (meta.actuation.outage_cv)."""
        cv = self.meta.actuation.outage_cv
        if self.act_rng is None or cv <= 0:
            return 1.0
        sigma = math.sqrt(math.log1p(cv * cv))
        return float(self.act_rng.lognormal(-sigma * sigma / 2.0, sigma))

    def _fails(self, share: float) -> bool:
        return self.act_rng is not None and share > 0 and float(self.act_rng.random()) < share

    def _move(self, name: str, target: InstanceRef, kind: MoveKind, reconfig_k: float = 1.0) -> None:
        """Start moving `name`, on fsm.outage's timeline (the one the decision core budgets with) at
        the host's durations (meta.actuation; `reconfig_k`: the reconfiguration's, over the
        configured). A new copy that never gets ready, or not within the launcher's readiness wait,
        fails the move as actuators/moves.py fails it: a restart move relaunches the tenant on its
        old instance (left to finish however long that takes), a warm one stops the new copy and
        keeps the old, a resize whose old instance is gone is left starting on the new one."""
        ts = self.spec.tenants[name]
        fid = self.meta.actuation
        warm = ts.handover == "warm"
        relaunch = ts.relaunch_s
        if self.act_rng is not None:
            relaunch *= fid.relaunch_factor * self._jitter()
        tl = move_timeline(kind, relaunch, ts.reconfig_s * reconfig_k, warm, ts.handover_gap_s)
        # What the live actuators record and the cost model reads (linux_host): a restart move's
        # relaunch (a resize's too, apart from its MIG change), a warm one's switch-over gap; a
        # warm tenant resized in place restarts, and its relaunch is no gap.
        in_place = kind is MoveKind.IN_PLACE
        measured = None if warm and in_place else (ts.handover_gap_s if warm else relaunch)
        wait = fid.readiness_wait(ts.relaunch_s)
        never = not in_place and self._fails(fid.move_failures)
        if never or (wait is not None and relaunch > wait):
            launched = self.t + (tl.down_at if warm and not in_place else tl.up_at) - relaunch  # its relaunch starts
            given_up = launched + (wait if wait is not None else relaunch)
            why = (
                "the new copy never got ready (simulated: actuation.move_failures)"
                if never
                else f"not ready within {wait:g} s (simulated: actuation.readiness_timeout_s)"
            )
            if never and self._fails(fid.failed_exits):
                # it exits while it loads, and the launcher sees its unit fail at its next check
                assert self.act_rng is not None
                died = launched + float(self.act_rng.random()) * relaunch + EXIT_CHECK_S
                given_up = min(given_up, died)
                why = "the new copy exited while starting (simulated: actuation.failed_exits)"
            if warm and not in_place:  # its new copy is stopped, the old one served throughout
                self.moves[name] = Move(
                    self.instance[name],
                    self.t,
                    given_up,
                    given_up,
                    error=why + "; new copy stopped, old copy kept",
                    restarts=False,
                )
            elif in_place:  # nothing to move back to: it finishes starting where it is
                self.moves[name] = Move(
                    target,
                    self.t,
                    self.t + tl.down_at,
                    self.t + tl.up_at,
                    error=why + "; old instance gone, left starting there",
                )
            else:  # it relaunches on its old instance once given up on (as slow there: left to finish)
                back = self.instance[name]
                self.moves[name] = Move(
                    back, self.t, self.t + tl.down_at, given_up + relaunch, error=why + "; moved back"
                )
            return
        self.moves[name] = Move(target, self.t, self.t + tl.down_at, self.t + tl.up_at, measured_s=measured)

    def _fail(self, target: str, error: str) -> None:
        """An operation refused before anything stopped (an outage of 0)."""
        self.outcomes.append(Outcome(target, False, error, self.t, 0.0))
        self.stats.failed_ops += 1

    def _occupant(self, inst: InstanceRef) -> str | None:
        for n, i in self.instance.items():
            if i == inst:
                return n
        return None

    def apply_sync(self, desired: DesiredState) -> None:
        if not desired.enforce:
            # dry-run / shadow: nothing is applied, and the caps and MPS limits set before are
            # lifted, as the real reconciler lifts its own in a dry run (ReconcileReport.lift)
            self.caps, self.mps = {}, {}
            return
        self.caps = {}
        for th in desired.throttles:
            dev = self.topo.resolve(th.device) or th.device
            self.caps[(th.tenant, dev)] = th
        self.mps = {m.tenant: m for m in desired.mps}
        busy = {op.gpu for op in self.ops}
        for gpu, want_raw in sorted(desired.layouts.items()):
            want = normalise(want_raw)
            cur = self.layouts.get(gpu)
            if cur is None:
                self._fail(f"gpu:{gpu}", f"no GPU {gpu!r} with MIG on this host")
                continue
            if want == cur or gpu in busy:
                continue
            problems = layout_problems(self.models[gpu], want)
            if problems:
                self._fail(f"gpu:{gpu}", "invalid MIG layout: " + "; ".join(problems))
                continue
            if self._fails(self.meta.actuation.reconfig_refusals):
                self._fail(f"gpu:{gpu}", "In use by another client (simulated: actuation.reconfig_refusals)")
                continue
            destroyed = set(cur) - set(want)
            moves: dict[str, InstanceRef] = {}
            blocked = []
            for n, inst in sorted(self.instance.items()):
                tgt = desired.placements.get(n)
                if inst.gpu == gpu and inst.slot in destroyed:
                    if tgt is not None and tgt.gpu == gpu and tgt.slot in want and n not in self.moves:
                        moves[n] = tgt
                    else:
                        blocked.append(f"{inst} ({n})")
                elif (
                    tgt is not None
                    and tgt != inst
                    and tgt.gpu == gpu
                    and tgt.slot in set(want) - set(cur)
                    and n not in self.moves
                ):
                    moves[n] = tgt
            if blocked:
                self._fail(f"gpu:{gpu}", f"In use by another client: {', '.join(blocked)}")
                continue
            k = self.meta.actuation.reconfig_factor * self._jitter() if self.act_rng is not None else 1.0
            # A tenant whose instance the change destroys stops first (IN_PLACE); one moving into a
            # new instance beside its own keeps serving meanwhile (BESIDE, make-before-break).
            for n, tgt in moves.items():
                doomed = self.instance[n].gpu == gpu and self.instance[n].slot in destroyed
                self._move(n, tgt, MoveKind.IN_PLACE if doomed else MoveKind.BESIDE, k)
            self.ops.append(MigOp(gpu, want, self.t, self.t + self.meta.reconfig_s * k))
            busy.add(gpu)
            self.stats.reconfigs += 1
        for n, tgt in sorted(desired.placements.items()):
            cur_inst = self.instance.get(n)
            if cur_inst == tgt or n in self.moves:
                continue
            if tgt.gpu in busy:
                continue  # the GPU is being reconfigured; its instances come back afterwards
            if tgt.slot not in self.layouts.get(tgt.gpu, ()):
                self._fail(f"tenant:{n}", f"no MIG instance {tgt} on this host")
                continue
            other = self._occupant(tgt)
            if other is not None:
                self._fail(f"tenant:{n}", f"MIG instance {tgt} is in use by {other}")
                continue
            self._move(n, tgt, MoveKind.EXISTING)
            self.stats.moves += 1

    def _finish_ops(self, until: float) -> None:
        done = [op for op in self.ops if op.end <= until]
        if done:
            self.ops = [op for op in self.ops if op.end > until]
            for op in sorted(done, key=lambda o: o.end):
                self.layouts[op.gpu] = op.layout
                self.outcomes.append(Outcome(f"gpu:{op.gpu}", True, "", op.end))
        arrived = sorted((m.up_at, n) for n, m in self.moves.items() if m.up_at <= until)
        for up_at, n in arrived:
            m = self.moves.pop(n)
            self.instance[n] = m.target
            down_s = m.up_at - m.down_at
            self.stats.outages.append((m.start, n, down_s, not m.error))
            self.outcomes.append(Outcome(f"tenant:{n}", not m.error, m.error, up_at, down_s if m.error else None))
            if m.error:
                self.stats.failed_ops += 1
            elif m.measured_s is not None:
                self.measured[n] = m.measured_s
