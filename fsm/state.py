"""The controller's memory between ticks. Serialises to JSON and back (crash recovery)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsm.codec import decode_as, encode
from fsm.desired import MpsLimit, Throttle
from fsm.evidence import SloEvidence
from fsm.mig import MAX_MEM_SLOTS, PROFILE_NAME, Slot
from fsm.observation import InstanceRef
from fsm.spec import Level

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Step:
    """One escalation, kept on a stack so release undoes them in reverse order."""

    level: Level  # the level this step brought the tenant to
    lever: str  # guard | place | resize
    t: float
    aggressors: tuple[str, ...] = ()
    caps: tuple[Throttle, ...] = ()
    mps: tuple[MpsLimit, ...] = ()
    from_instance: InstanceRef | None = None
    to_instance: InstanceRef | None = None
    gpu: str | None = None
    prev_layout: tuple[Slot, ...] | None = None
    new_layout: tuple[Slot, ...] | None = None
    bad_share: float | None = None  # the tenant's recent share of requests over the SLO when taken
    relief_t: float | None = None  # a guard's relief last found nowhere to go (None: count from t)
    helped: bool = False  # a guard's verdict: it cut the tail (kept: lifting it would undo the proof)


@dataclass(frozen=True, slots=True)
class Pending:
    """An actuation the core asked for and has not seen finish."""

    target: str  # tenant:NAME | gpu:NAME
    lever: str
    since: float
    releasing: bool = False
    gpu: str | None = None  # a layout change that follows the move (second phase of a release)
    then_layout: tuple[Slot, ...] | None = None


@dataclass(frozen=True, slots=True)
class TenantCtl:
    bad: int = 0  # consecutive ticks judged violating
    good: int = 0  # consecutive ticks judged good
    cooldown_until: float | None = None
    dwell_until: float | None = None
    backoff_until: float | None = None
    failures: int = 0
    # Moves and resizes that relaunched the tenant, and those whose new copy never got ready (or
    # exited): its own failure risk, learned (fsm.levercost.fail_risk).
    relaunches: int = 0
    relaunch_fails: int = 0
    failed_levers: tuple[str, ...] = ()  # not tried again in this episode
    # Levers whose operation failed once in this episode, and when they may be tried again (after
    # the backoff): a refusal or a new copy that never got ready is often transient; a second
    # failure bars the lever for the episode (failed_levers)
    retry_levers: tuple[tuple[str, float], ...] = ()
    stack: tuple[Step, ...] = ()
    pending: Pending | None = None
    episode_start: float | None = None  # when the evidence of the current episode began to grow
    # Requests of the current episode, and those over the SLO: what waiting has cost so far.
    episode_n: float = 0.0
    episode_bad: float = 0.0
    # The part of those served while the others' bytes on the victim's path made no I/O cause (less
    # than high_bw_bps): what a clear path left of the tail, which caps on the path or a same-sized
    # move off it cannot cut (fsm.tick_base, _path_not_the_cause).
    clear_n: float = 0.0
    clear_bad: float = 0.0
    # The clear stretches of this tenant's ended episodes: (requests, over the SLO, as of t), weighted
    # by exp(-age / guard_budget.trial_run_s). A tail of its own in the last minutes is a tail that
    # was there before an aggressor that starts with the next episode (tick_base._tail_before_path).
    clear_past: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Requests over the SLO beyond the budget (net: calm stretches pay back), exponentially weighted
    # over the outage budget's window, since the last move or resize spent them: the rent of
    # episodes that come and go, which a lever that stays would have saved too.
    overspend: float = 0.0
    overspend_t: float | None = None
    # Requests served and the seconds of the windows they came in (empty ones too: silent seconds),
    # weighted over the outage budget's window: the tenant's usual rate, against which an outage in
    # a burst is charged.
    served: tuple[float, float] = (0.0, 0.0)
    # The same windows' sum of count^2 / seconds: with `served`, the spread of the per-tick counts
    # (their index of dispersion), which prices the burst an outage may meet (tick_base._charged_s).
    served_sq: float = 0.0
    # Requests and seconds of the tenant's history before it was watched (its source's count since
    # its server started: TenantSample.served_total, uptime_s; usual_rate.served_before), weighted and
    # decayed as `served`: they join it in the usual rate, never in the spread, which is watched.
    history: tuple[float, float] = (0.0, 0.0)
    # When the last latency window came, once a tick has brought none (None: the last tick had one,
    # as nearly every tick has). A tick whose source was not read brings none, and the next window
    # holds both ticks' requests (a histogram's counters run on): its span is from here, not from
    # the tick before (a double count in one tick read as a burst).
    window_t: float | None = None
    watched_since: float | None = None  # the first window with requests in it (outage_warmup_s)
    # Requests since the last action on this tenant, and those over the SLO: what it did so far.
    acted_n: float = 0.0
    acted_bad: float = 0.0
    last_value: float | None = None  # the last window's quantile (s)
    recent: tuple[float, ...] = ()  # the last release_horizon_windows window quantiles (s)
    last_reason: str = ""
    target: InstanceRef | None = None  # where tailguard wants the tenant (None: leave it be)
    flaps: int = 0  # escalations soon after a release; each doubles the dwell (damping)
    released_at: float | None = None
    outages: tuple[tuple[float, float], ...] = ()  # (t, expected seconds) of moves in the budget window
    evidence: SloEvidence = field(default_factory=SloEvidence)
    episodes: tuple[float, ...] = ()  # lengths (s) of this tenant's last violation episodes
    measured_outage_s: float | None = None  # the actuators' last measured outage of a move
    # The shortest of its own restarts (TenantSample.restarted_s: a deploy, a crash), which bounds
    # its relaunch from above: before the actuators have measured a move, a restart tenant's moves
    # are priced at no less than it (fsm.outage.priced_relaunch).
    own_restart_s: float | None = None
    # After a move or resize finishes: until then its own backlog, not interference, delays the
    # tenant's requests, so they are not evidence either way.
    settle_until: float | None = None
    # After a restart outside tailguard (TenantSample.restarted_s): from then on, the first window
    # whose median is under the SLO ends the settle early (its backlog is served); settle_until is
    # then the longest drain (a server at MAX_RHO).
    drained_from: float | None = None
    # The last outage of ours (decision time, seconds charged; once the operation completes or fails
    # after stopping the tenant, (that time, 0) where it is later): a restart reported later whose
    # span began within it (its expected length twice, and a cooldown) is ours, however late the report
    moved: tuple[float, float] | None = None
    # Capping the I/O aggressors did not cut this tail: until then (across episodes), the path they
    # share is not taken to hold it, so a same-sized move off it is expected to cure little.
    io_doubt_until: float | None = None
    last_bad_t: float | None = None  # the last tick the evidence said violating
    # An outage being measured against fsm.levercost's prediction, from the tick it was taken until
    # its backlog is served: (taken at, predicted requests over the SLO, share over it before, the
    # tail before (s)), and the requests served and over the SLO since. cost_scale: measured / predicted, the
    # geometric mean over this tenant's measured outages (None: none measured yet).
    outage_watch: tuple[float, float, float, float] | None = None
    watch_n: float = 0.0
    watch_bad: float = 0.0
    cost_scale: float | None = None
    # The last placement search that found nowhere to go (no quieter or no free instance): (when,
    # the cause it ranked for, its answer). Until cooldown_s has passed, a hold gives that answer
    # again rather than ranking every free instance of the host again a tick later.
    place_none: tuple[float, str, str] | None = None
    # A hold whose only obstacle was a lever's price (its rent still short of it): the next attempt
    # comes at this time, with the evidence kept, instead of once fresh evidence is enough again.
    retry_at: float | None = None
    # When this tenant's retry (an escalation after the ladder refused it: a hold, a failure, a held
    # release) was first put off because the tick's retry slots (hold_retries_per_tick) were taken:
    # once queued for a cooldown_s it holds a slot on the next tick, the longest queued first.
    retry_queued: float | None = None
    # When a move or resize was last held for a burst its outage would meet (outage_burst_wait):
    # until cooldown_s later (the next tick at least) it is tried again on every tick, violating or
    # not, and taken on the first that is no burst (if it still pays). The evidence crosses its
    # threshold in bursts, when the tail is worst; a retry that waited for the evidence again would
    # meet the next burst.
    burst_held_at: float | None = None
    # When a move or resize was first held in this episode for the tenant's own backlog (a queue
    # its arrivals keep past its capacity, tick_base._backlog_now): such holds last at most the
    # outage's own length from then, and the episode's end or an outage taken clears it.
    backlog_since: float | None = None

    @property
    def shared(self) -> tuple[float, float]:
        """The episode's requests served while the path was shared (not clear), and those over the SLO."""
        return self.episode_n - self.clear_n, self.episode_bad - self.clear_bad

    @property
    def level(self) -> Level:
        return self.stack[-1].level if self.stack else Level.STEADY


@dataclass(frozen=True, slots=True)
class ControllerState:
    version: int = STATE_VERSION
    tenants: Mapping[str, TenantCtl] = field(default_factory=dict)
    layouts: Mapping[str, tuple[Slot, ...]] = field(default_factory=dict)  # GPUs tailguard manages
    reconfigs: tuple[float, ...] = ()  # times of MIG layout changes (rolling-hour budget)
    bad_input: Mapping[str, int] = field(default_factory=dict)  # reason -> count
    seq: int = 0  # last decision-event sequence number
    # bulk/compute tenant -> (seconds held at its caps, seconds it ran; exponentially weighted; as of t)
    guard_cost: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    # the tenants whose caps were in force after the last decision: only they can be held by one
    capped: tuple[str, ...] = ()
    last_t: float | None = None

    def to_json(self) -> str:
        return json.dumps(encode(self), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> ControllerState:
        """The state in `text` as json.loads reads it: a round trip of to_json. A state file is read
        by the daemon with schema.jsontext.loads_json, which refuses what json.loads takes and
        to_json never writes (a key given twice), then given to from_data (the core imports no
        parser of the shell's)."""
        try:
            data: Any = json.loads(text)
        except RecursionError:  # valid JSON nested too deeply for the parser: as malformed
            raise ValueError("controller state: arrays or objects nested too deeply") from None
        return ControllerState.from_data(data)

    @staticmethod
    def from_data(data: Any) -> ControllerState:
        """The state in a parsed JSON document; ValueError naming the field for one to_json never
        writes (and DecodeError, a ValueError, for one that does not fit the types)."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(
                f"controller state: unsupported version {data.get('version') if isinstance(data, dict) else None!r}"
            )
        state = decode_as(ControllerState, data)
        for gpu, layout in state.layouts.items():
            # decoded field by field, not through Slot.parse: a start of -5 or a profile "../../x"
            # was resumed and sent on as the desired layout on every tick
            for slot in layout:
                if not PROFILE_NAME.fullmatch(slot.profile) or not 0 <= slot.start < MAX_MEM_SLOTS:
                    raise ValueError(f"controller state: layouts.{gpu}: {slot.profile}@{slot.start} is no MIG slot")
            if len(set(layout)) != len(layout):
                raise ValueError(f"controller state: layouts.{gpu}: a slot twice")
        _counts_not_negative(state)
        return state

    def tenant(self, name: str) -> TenantCtl:
        ctl = self.tenants.get(name)
        return ctl if ctl is not None else TenantCtl()  # not built on every call: it is hot


# TenantCtl's counters: added to by one and reset to 0, never taken from. Resumed below 0, one
# counts events that never happened (failures = -3 cut the next backoff, backoff_s * 2 **
# (failures - 1), to an eighth; the dwell's doubling, 1 << flaps, raises ValueError for a negative
# count).
_TENANT_COUNTS = ("bad", "good", "failures", "flaps", "relaunches", "relaunch_fails")


def _counts_not_negative(state: ControllerState) -> None:
    """ValueError naming the first counter below 0 (a resume's check: a few fields per tenant)."""
    if state.seq < 0:
        raise ValueError(f"controller state: seq: {state.seq} is below 0 (a count)")
    for reason, n in state.bad_input.items():
        if n < 0:
            raise ValueError(f"controller state: bad_input.{reason}: {n} is below 0 (a count)")
    for name, ctl in state.tenants.items():
        for f in _TENANT_COUNTS:
            n = getattr(ctl, f)
            if n < 0:
                raise ValueError(f"controller state: tenants.{name}.{f}: {n} is below 0 (a count)")
        if ctl.relaunch_fails > ctl.relaunches:  # a risk over 1: a benefit below 0, a cost past the failure's
            raise ValueError(
                f"controller state: tenants.{name}.relaunch_fails: {ctl.relaunch_fails} is more than its"
                f" relaunches ({ctl.relaunches})"
            )
