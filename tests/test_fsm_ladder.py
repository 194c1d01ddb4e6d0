"""One test per transition of the escalation ladder, and the host-wide arbitration rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fsm import ladder
from fsm.decide import Decision, decide
from fsm.examples import EXAMPLE_LAYOUTS, UNPRICED_OUTAGES, example_observation, example_spec
from fsm.mig import Slot
from fsm.observation import ActuationStatus, InstanceRef, MigSample, Observation, Outcome, TenantSample
from fsm.outage import MoveKind
from fsm.spec import Level, Policy, Role, TenantSpec
from fsm.state import ControllerState

SLO = 0.015
HOME = InstanceRef("gpu0", "2g.10gb", 0)
# The ladder's mechanics (levels, cooldowns, budgets, failures) apart from whether a lever pays:
# that is tests/test_fsm_levercost.py's subject.
MECHANICS = Policy(**UNPRICED_OUTAGES, cost_margin=None)
NO_OUTAGE_LIMIT = Policy(
    **UNPRICED_OUTAGES, outage_budget_share=None, cost_margin=None
)  # for moves and resizes back to back


def run(spec, state, observations):
    out: list[Decision] = []
    for obs in observations:
        d = decide(state, obs, spec)
        state = d.state
        out.append(d)
    return state, out


def events(decisions, kind=None):
    return [e for d in decisions for e in d.events if kind is None or e.kind == kind]


def stream(t0, n, p99, etl=3e9, **kw):
    return [example_observation(t0 + 2.0 * i, p99, etl, **kw) for i in range(n)]


def test_steady_to_guarded_on_io_cause_after_y_windows():
    spec = example_spec(MECHANICS)
    state, ds = run(spec, ControllerState(), stream(0, 2, 0.020))
    assert not events(ds)  # two bad windows: not yet
    state, ds = run(spec, state, stream(4, 1, 0.020))
    (e,) = events(ds)
    assert (e.kind, e.level_from, e.level_to, e.lever) == ("escalate", "steady", "guarded", "guard")
    assert e.evidence["diagnosis"]["cause"] == "io"
    caps = ds[-1].desired.throttles
    assert [(c.tenant, c.device) for c in caps] == [("etl", "nvme0n1")]
    assert caps[0].read_bps == 1.5e9 and caps[0].expires_at == 4 + spec.policy.throttle_expiry_s
    assert state.tenant("llm").level is Level.GUARDED


def test_protected_and_sensitive_tenants_are_never_throttled():
    spec = example_spec(MECHANICS)
    _, ds = run(spec, ControllerState(), stream(0, 3, 0.020, etl=3e9))
    assert {c.tenant for d in ds for c in d.desired.throttles} == {"etl"}  # db (protected) shares nvme0n1 too
    # With only protected traffic on the path there is nothing to guard: go to placement.
    spec2 = replace(spec, tenants={k: v for k, v in spec.tenants.items() if k != "etl"})
    _, ds = run(spec2, ControllerState(), stream(0, 3, 0.020, etl=3e9))
    assert not any(d.desired.throttles for d in ds)


def test_compute_cause_skips_the_guard_and_places():
    spec = example_spec(MECHANICS)
    obs = stream(0, 3, 0.020, etl=0.0)
    hot = []
    for o in obs:
        g = o.gpus["gpu0"]
        inst = dict(g.instances)
        inst["2g.10gb@0"] = MigSample(sm_active=0.97, dram_active=0.4)
        hot.append(replace(o, gpus={**o.gpus, "gpu0": replace(g, instances=inst)}))
    _, ds = run(spec, ControllerState(), hot)
    (e,) = events(ds)
    assert e.evidence["diagnosis"]["cause"] == "compute"
    assert (e.level_to, e.lever) == ("placed", "place")
    # the size bonus prefers a bigger free instance: the free 3g on gpu0 (same GPU first)
    assert ds[-1].desired.placements["llm"] == InstanceRef("gpu0", "3g.20gb", 4)


def _guarded(spec):
    state, _ = run(spec, ControllerState(), stream(0, 3, 0.020))
    assert state.tenant("llm").level is Level.GUARDED
    return state


def _judged(spec):
    """A guard put on at t=-116 whose verdict is in by t=40 (2 x rate_tau_s later): it cut the share
    of requests over the SLO by four fifths (p99 30 -> 20 ms) without bringing the tail inside the
    SLO, so the next lever may come at t=40 (until the verdict the dear levers wait, see
    test_no_move_while_the_guard_is_being_judged)."""
    state, _ = run(spec, ControllerState(), stream(-120, 3, 0.030))
    assert state.tenant("llm").level is Level.GUARDED
    return state


def test_guarded_to_placed_after_cooldown_when_still_violating():
    spec = example_spec(MECHANICS)
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    (e,) = events(ds, "escalate")
    assert (e.level_from, e.level_to, e.lever) == ("guarded", "placed", "place")
    target = ds[-1].desired.placements["llm"]
    assert target.gpu == "gpu3"  # off the ETL's switch
    assert e.evidence["candidates"][0]["instance"] == str(target)
    assert state.tenant("llm").pending is not None


def test_no_move_while_the_guard_is_being_judged():
    """After a guard, nothing during the cooldown; then, while the tail still violates, no move or
    resize until the guard's verdict (2 x rate_tau_s): caps that cut the tail make the outage
    needless, caps that do not say the path is not what a move would escape."""
    spec = example_spec(MECHANICS)
    state, _ = run(spec, ControllerState(), stream(0, 3, 0.030))  # guard at t=4
    state, ds = run(spec, state, stream(6, 10, 0.020))  # inside the cooldown (30 s)
    assert not events(ds)
    state, ds = run(spec, state, stream(40, 40, 0.020))  # 40..118: still being judged
    assert not events(ds, "escalate")
    holds = events(ds, "hold")
    assert holds and "the caps on etl are still being judged" in holds[0].reason
    # the verdict is in at t=124: the caps cut the share over the SLO by four fifths, not enough
    state, ds = run(spec, state, stream(120, 6, 0.020))
    (e,) = events(ds, "escalate")
    assert e.t >= 4 + 2 * spec.policy.rate_tau_s
    assert (e.level_from, e.level_to, e.lever) == ("guarded", "placed", "place")
    # caps that do not cut the tail are lifted at the verdict instead, and the move's efficacy is
    # that of an unknown cause (the lesson of the guard)
    state, _ = run(spec, ControllerState(), stream(0, 3, 0.020))
    state, ds = run(spec, state, stream(40, 45, 0.020))
    assert [(e.kind, e.lever) for e in events(ds) if e.kind != "hold"] == [("release", "guard")]
    assert "did not cut the tail" in events(ds, "release")[0].reason


def test_pending_move_blocks_actions_until_it_completes():
    spec = example_spec(MECHANICS)
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    # in flight: nothing more happens even with bad windows, the move is re-asserted
    flying = [replace(o, actuation=ActuationStatus(in_flight=("tenant:llm",))) for o in stream(90, 5, 0.030)]
    state, ds = run(spec, state, flying)
    assert not events(ds) and all(d.desired.placements["llm"] == target for d in ds)
    # done: the observation shows the tenant on the target
    state, ds = run(spec, state, stream(100, 1, 0.010, llm_at=target))
    assert [e.kind for e in events(ds)] == ["complete"]
    assert state.tenant("llm").pending is None


def test_failed_move_backs_off_and_tries_the_next_lever():
    spec = example_spec(MECHANICS)
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    # the actuators' word: its new copy was not ready by the deadline, the tenant down for 10 s
    no = ActuationStatus(outcomes=(Outcome("tenant:llm", False, "readiness deadline", 50, 10.0),))
    state, ds = run(spec, state, [replace(o, actuation=no) for o in stream(50, 1, 0.020)])
    (e,) = events(ds)
    assert e.kind == "fail" and e.level_to == "guarded" and e.evidence["backoff_s"] == spec.policy.backoff_s
    # its backlog settles (a cooldown at least) as after a restart of its own: not interference
    assert e.evidence["settle_s"] == max(spec.policy.cooldown_s, 10.0)
    assert "llm" not in ds[-1].desired.placements or ds[-1].desired.placements["llm"] == HOME
    ctl = state.tenant("llm")
    assert ctl.backoff_until == 50 + spec.policy.backoff_s
    assert ctl.retry_levers == (("place", 50 + spec.policy.backoff_s),) and not ctl.failed_levers
    # inside the backoff: nothing; after it: the next lever (resize), the failed one after it
    state, ds = run(spec, state, stream(52, 20, 0.020))
    assert not events(ds, "escalate")
    state, ds = run(spec, state, stream(120, 3, 0.020))
    (e,) = events(ds, "escalate")
    assert (e.level_to, e.lever) == ("resized", "resize")


@pytest.mark.parametrize(("said", "charged"), [(None, 5.0), (0.0, None), (3.0, 5.0), (40.0, 5.0)])
def test_a_failed_move_that_stopped_nothing_gives_its_outage_back(said, charged):
    """Charged when the move was taken (its 5 s relaunch); at its failure, where the actuators say
    the tenant was never stopped the charge is given back; otherwise it stays (charging a longer
    outage in full left no budget for the lever's second try: docs/results.md, session 24)."""
    spec = example_spec(MECHANICS)
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    (e,) = events(ds, "escalate")
    assert e.lever == "place" and [s for _, s in state.tenant("llm").outages] == [5.0]
    no = ActuationStatus(outcomes=(Outcome("tenant:llm", False, "not ready", 50, said),))
    state, ds = run(spec, state, [replace(o, actuation=no) for o in stream(50, 1, 0.020)])
    assert [f.kind for f in events(ds)] == ["fail"]
    assert [s for _, s in state.tenant("llm").outages] == ([] if charged is None else [charged])


def _refused(spec, state, t0):
    """Bad windows from t0 until the ladder resizes; the resize refused on the next tick."""
    for k in range(200):
        state, ds = run(spec, state, stream(t0 + 2.0 * k, 1, 0.020))
        if events(ds, "escalate"):
            (e,) = events(ds, "escalate")
            assert e.lever == "resize", e
            no = ActuationStatus(outcomes=(Outcome("gpu:gpu0", False, "In use by another client", e.t + 2, 0.0),))
            state, ds = run(spec, state, [replace(o, actuation=no) for o in stream(e.t + 2, 1, 0.020)])
            (f,) = events(ds, "fail")
            return state, f
    raise AssertionError("no resize")


def test_a_lever_refused_once_is_tried_again_after_its_backoff_and_barred_after_a_second_failure():
    """The only lever left (no guard, no placement) refused once, as nvidia-smi refuses a change
    while another process holds the GPU: tried again after the backoff, not left barred for an
    episode that may last hours; refused again, barred until the episode ends."""
    spec = example_spec(Policy(**UNPRICED_OUTAGES, cost_margin=None, guards=False, mps=False, placement=False))
    state, first = _refused(spec, ControllerState(), 0)
    assert first.evidence["backoff_s"] == spec.policy.backoff_s
    ctl = state.tenant("llm")
    assert ctl.retry_levers == (("resize", first.t + spec.policy.backoff_s),) and not ctl.failed_levers
    # refused before anything stopped: its outage is given back to the budget
    assert ctl.outages == () and first.evidence["outage_refunded_s"] > 0
    state, second = _refused(spec, state, first.t + 2)
    assert second.t > first.t + spec.policy.backoff_s  # not before its backoff
    assert state.tenant("llm").failed_levers == ("resize",)
    state, ds = run(spec, state, stream(second.t + 400, 60, 0.020))
    assert not events(ds, "escalate")
    assert any("resize: failed in this episode" in e.reason for e in events(ds, "hold"))


def test_operation_that_never_reports_times_out():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, in_flight_timeout_s=20, cost_margin=None))
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    state, ds = run(spec, state, stream(46, 12, 0.012))
    assert [e.kind for e in events(ds)] == ["timeout"]


def test_an_operation_the_actuators_still_run_is_waited_for_past_the_timeout():
    """A move still reported in flight at the timeout is a slow relaunch (a cold start), not a
    lost one: undoing it would queue a move back behind it, a second outage. It completes; one
    still running at IN_FLIGHT_GRACE times the timeout is taken as hung."""
    spec = example_spec(Policy(**UNPRICED_OUTAGES, in_flight_timeout_s=20, cost_margin=None))
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    since = events(ds, "escalate")[0].t
    busy = ActuationStatus(in_flight=("tenant:llm",))
    slow = [replace(o, actuation=busy) for o in stream(46, 30, 0.012)]  # 60 s: 3x the timeout
    moving, ds = run(spec, state, slow)
    assert not events(ds, "timeout") and moving.tenant("llm").pending is not None
    _, ds = run(spec, moving, stream(106, 1, 0.012, llm_at=target))
    assert [e.kind for e in events(ds)] == ["complete"]
    hung = [replace(o, actuation=busy) for o in stream(106, 20, 0.012)]  # past 4 x 20 s
    _, ds = run(spec, moving, hung)
    (e,) = events(ds)
    assert e.kind == "timeout" and e.reason.startswith("still under way after")
    assert ladder.IN_FLIGHT_GRACE * 20 < e.t - since <= ladder.IN_FLIGHT_GRACE * 20 + 2


def _placed_then_resized(spec):
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    state, _ = run(spec, state, stream(50, 1, 0.020, llm_at=target))
    state, ds = run(spec, state, stream(100, 3, 0.020, llm_at=target))
    (e,) = events(ds, "escalate")
    assert (e.level_from, e.level_to, e.lever) == ("placed", "resized", "resize")
    desired = ds[-1].desired
    return state, target, desired


def test_placed_to_resized_plans_a_valid_bigger_slice_on_the_same_gpu():
    spec = example_spec(NO_OUTAGE_LIMIT)
    state, target, desired = _placed_then_resized(spec)
    new = desired.placements["llm"]
    assert new.gpu == target.gpu == "gpu3" and new.profile == "3g.20gb"
    layout = desired.layouts["gpu3"]
    assert Slot(new.start, new.profile) in layout
    assert len(state.reconfigs) == 1 and 100 <= state.reconfigs[0] <= 104


def test_release_steps_back_in_reverse_order_after_z_good_windows_and_dwell():
    spec = example_spec(NO_OUTAGE_LIMIT)
    state, _placed_at, desired = _placed_then_resized(spec)
    big = desired.placements["llm"]
    layouts = {**EXAMPLE_LAYOUTS, **desired.layouts}
    state, _ = run(spec, state, stream(110, 1, 0.005, llm_at=big, layouts=layouts))
    assert state.tenant("llm").pending is None
    kinds = []
    t = 112.0
    at, lay = big, layouts
    for _ in range(200):
        d = decide(state, example_observation(t, 0.005, 1e8, llm_at=at, layouts=lay), spec)
        state = d.state
        for e in d.events:
            kinds.append((e.kind, e.level_from, e.level_to))
        at = d.desired.placements.get("llm", at)
        lay = {**lay, **d.desired.layouts}
        t += 2.0
    releases = [k for k in kinds if k[0] == "release"]
    assert releases == [
        ("release", "resized", "placed"),
        ("release", "placed", "guarded"),
        ("release", "guarded", "steady"),
    ]
    assert state.tenant("llm").level is Level.STEADY
    assert at == HOME  # moved back home in the end
    assert lay["gpu3"] == EXAMPLE_LAYOUTS["gpu3"]  # the resize was given back


def test_reconfiguration_budget_is_never_exceeded():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, max_reconfigs_per_hour=0, cost_margin=None))
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    state, _ = run(spec, state, stream(50, 1, 0.020, llm_at=target))
    state, ds = run(spec, state, stream(100, 3, 0.020, llm_at=target))
    holds = events(ds, "hold")
    assert holds and "budget" in holds[0].reason
    assert not events(ds, "escalate")


def test_two_victims_are_never_sent_to_the_same_instance():
    spec = example_spec(MECHANICS)
    twin = TenantSpec("llm2", Role.SENSITIVE, "llm2.slice", "gpu0", InstanceRef("gpu0", "2g.10gb", 2), SLO)
    spec = replace(spec, tenants={**spec.tenants, "llm2": twin})
    obs = []
    for o in stream(0, 3, 0.020, etl=0.0):
        g = o.gpus["gpu0"]
        inst = {k: MigSample(sm_active=0.97) for k in g.instances}
        t2 = replace(o.tenants["llm"], instance=twin.instance)
        obs.append(replace(o, tenants={**o.tenants, "llm2": t2}, gpus={**o.gpus, "gpu0": replace(g, instances=inst)}))
    _, ds = run(spec, ControllerState(), obs)
    places = ds[-1].desired.placements
    assert set(places) == {"llm", "llm2"} and places["llm"] != places["llm2"]


def test_one_mig_change_per_gpu_at_a_time():
    spec = example_spec(NO_OUTAGE_LIMIT)
    state, _, desired = _placed_then_resized(spec)
    # another victim wants gpu3 changed while the first change is in flight: it must not get it
    twin = TenantSpec("llm2", Role.SENSITIVE, "llm2.slice", "gpu3", InstanceRef("gpu3", "2g.10gb", 2), SLO)
    spec2 = replace(spec, tenants={**spec.tenants, "llm2": twin})
    busy = []
    for o in stream(200, 40, 0.020, llm_at=desired.placements["llm"]):
        t2 = replace(o.tenants["llm"], instance=twin.instance)
        busy.append(
            replace(
                o, tenants={**o.tenants, "llm2": t2}, actuation=ActuationStatus(in_flight=("tenant:llm", "gpu:gpu3"))
            )
        )
    _, ds = run(spec2, state, busy)
    for e in events(ds, "escalate"):
        if e.tenant == "llm2" and e.lever == "resize":
            assert e.evidence["plan"]["gpu"] != "gpu3"
        if e.tenant == "llm2" and e.lever == "place":
            assert not e.evidence["candidates"][0]["instance"].startswith("gpu3/")


def test_dry_run_decides_but_marks_nothing_applied_and_waits_for_nothing():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, enforce=False, cost_margin=None))
    state, ds = run(spec, ControllerState(), stream(0, 3, 0.020))
    (e,) = events(ds)
    assert e.applied is False and ds[-1].desired.enforce is False
    state, ds = run(spec, state, stream(40, 3, 0.020))
    assert state.tenant("llm").pending is None  # nothing waited for in dry-run


def test_bad_numbers_are_unavailable_and_counted_never_zero():
    spec = example_spec(MECHANICS)
    obs = example_observation(0, float("nan"), -5.0)
    d = decide(ControllerState(), obs, spec)
    bad = d.state.bad_input
    assert bad["tenant.llm.latency.p99: NaN"] == 1
    assert bad["tenant.etl.io.nvme0n1.read_bps: negative"] == 1
    assert bad["gpu.gpu1.pcie_tx_bps: negative"] == 1
    # a NaN window counts as empty, not as good or bad
    assert d.state.tenant("llm").bad == 0 and d.state.tenant("llm").good == 0


def test_time_going_backwards_is_ignored_and_counted():
    spec = example_spec(MECHANICS)
    state, _ = run(spec, ControllerState(), stream(100, 2, 0.020))
    d = decide(state, example_observation(50, 0.020, 3e9), spec)
    assert d.state.bad_input["observation.t: went backwards"] == 1
    # the evidence of the two violating windows is kept as it was, not added to
    assert not d.events and d.state.tenant("llm").evidence == state.tenant("llm").evidence
    assert d.state.tenant("llm").evidence.up > 0


def test_unavailable_latency_holds_the_counters():
    spec = example_spec(MECHANICS)
    state, _ = run(spec, ControllerState(), stream(0, 2, 0.020))
    missing = Observation(t=10, tenants={"llm": TenantSample(latency=None)}, unavailable={"latency:llm": "timeout"})
    d = decide(state, missing, spec)
    before, after = state.tenant("llm").evidence, d.state.tenant("llm").evidence
    assert not d.events and after.up == before.up > 0  # no data: the evidence neither grows nor fades
    # and the next violating window completes the trigger
    d = decide(d.state, example_observation(12, 0.020, 3e9), spec)
    assert [e.kind for e in d.events] == ["escalate"]


def test_state_round_trips_through_json():
    spec = example_spec(NO_OUTAGE_LIMIT)
    state, _, _ = _placed_then_resized(spec)
    assert ControllerState.from_json(state.to_json()) == state


def test_configured_mig_ladder_is_climbed():
    ladder = {"A100-SXM4-40GB": ("2g.10gb", "7g.40gb")}
    spec = example_spec(Policy(**UNPRICED_OUTAGES, mig_ladder=ladder, outage_budget_share=None, cost_margin=None))
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    state, _ = run(spec, state, stream(50, 1, 0.020, llm_at=target))
    # nothing else runs on gpu3, so all its free instances may make way for a 7g
    state, ds = run(spec, state, stream(100, 3, 0.020, llm_at=target))
    (e,) = events(ds, "escalate")
    assert e.lever == "resize" and ds[-1].desired.placements["llm"].profile == "7g.40gb"


def test_flapping_doubles_the_dwell():
    spec = example_spec(MECHANICS)
    state, _ = run(spec, ControllerState(), stream(0, 3, 0.020))  # guard at t=4
    t = 6.0
    # calm: release after the dwell (60 s)
    state, ds = run(spec, state, stream(t, 40, 0.005, etl=1e8))
    (rel,) = events(ds, "release")
    # bad again right away: re-escalate soon after the release -> one flap, the dwell doubles
    state, ds = run(spec, state, stream(rel.t + spec.policy.cooldown_s, 3, 0.020))
    (esc,) = events(ds, "escalate")
    ctl = state.tenant("llm")
    assert ctl.flaps == 1 and ctl.dwell_until == esc.t + 2 * spec.policy.dwell_s


def test_early_guard_acts_on_the_first_violating_window_with_a_clear_io_cause():
    spec = example_spec(Policy(**UNPRICED_OUTAGES, early_guard=True))
    _, ds = run(spec, ControllerState(), stream(0, 1, 0.020))
    (e,) = events(ds)
    assert (e.kind, e.lever, e.level_to) == ("escalate", "guard", "guarded")
    # without an aggressor on the path it waits for Y windows like everybody else
    _, ds = run(spec, ControllerState(), stream(0, 2, 0.020, etl=0.0))
    assert not events(ds)


def test_binding_guard_is_relieved_by_a_move_off_the_path_and_its_caps_lifted():
    """A guard that still binds after guard_relief_s is a standing cost to the aggressor: the
    victim moves to a quieter instance off the capped device's path, and once the move is done
    the caps that no longer share its path are lifted (the guard step leaves the stack)."""
    from fsm.topology import Tier

    # (no throughput budget for the capped tenant here: that limit is its own test)
    spec = example_spec(Policy(**UNPRICED_OUTAGES, io_share_tier=Tier.SWITCH, guard_cost_share=None))
    state = _guarded(spec)  # caps etl's nvme0n1 (on sw0, the victim's switch) at 1.5 GB/s at t=4
    # calm under the guard, the ETL pressing against its cap: relief after 60 s
    state, ds = run(spec, state, stream(6, 28, 0.010, etl=1.5e9))
    assert not events(ds)
    state, ds = run(spec, state, stream(64, 1, 0.010, etl=1.5e9))
    (e,) = events(ds)
    assert (e.kind, e.level_from, e.level_to, e.lever) == ("escalate", "guarded", "placed", "place")
    assert e.reason.startswith("relieve the guard") and e.evidence["window"]["relief"]
    target = ds[-1].desired.placements["llm"]
    assert target.gpu == "gpu3"  # sw1: off nvme0's switch
    assert ds[-1].desired.throttles  # the caps hold until the move is done
    state, ds = run(spec, state, stream(70, 1, 0.010, etl=1.5e9, llm_at=target))
    (e,) = events(ds)
    assert e.kind == "complete" and e.evidence["caps_lifted"] == ["etl:nvme0n1"]
    assert not ds[-1].desired.throttles
    assert [s.lever for s in state.tenant("llm").stack] == ["place"]


def test_guard_that_does_not_bind_is_released_not_relieved():
    from fsm.topology import Tier

    spec = example_spec(Policy(**UNPRICED_OUTAGES, io_share_tier=Tier.SWITCH))
    state = _guarded(spec)
    state, ds = run(spec, state, stream(6, 30, 0.010, etl=2e8))  # the ETL went quiet, far under its cap
    assert [(e.kind, e.lever) for e in events(ds)] == [("release", "guard")]
    assert not ds[-1].desired.throttles and "llm" not in ds[-1].desired.placements


def test_no_relief_target_off_the_path_means_no_move():
    spec = example_spec(MECHANICS)  # io_share_tier NUMA: every GPU of this host shares nvme0's NUMA node
    state = _guarded(spec)
    state, ds = run(spec, state, stream(6, 40, 0.010, etl=1.5e9))
    assert not events(ds, "escalate")  # nowhere off the path: no relief move
    assert [(e.kind, e.lever) for e in events(ds)] == [("release", "guard")]  # the usual hysteresis


def test_outage_budget_stops_a_resize_right_after_a_move():
    """A p99 tenant may lose 0.5 x 1% of the budget window to moves (an hour here: 18 s). With a
    10 s relaunch, after one move (10 s) a make-before-break resize (another relaunch, fsm.outage:
    10 s) would not fit, so it holds."""
    spec = example_spec(Policy(**UNPRICED_OUTAGES, cost_margin=None, outage_budget_window_s=3600))
    spec = replace(spec, tenants={**spec.tenants, "llm": replace(spec.tenants["llm"], relaunch_s=10.0)})
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    (e,) = events(ds, "escalate")
    assert e.lever == "place" and e.evidence["outage_s"] == 10.0
    target = ds[-1].desired.placements["llm"]
    state, _ = run(spec, state, stream(50, 1, 0.020, llm_at=target))
    state, ds = run(spec, state, stream(100, 3, 0.020, llm_at=target))
    assert not events(ds, "escalate")
    (h,) = events(ds, "hold")
    assert "outage budget spent (10 s of 18 s per 3600 s; this needs 10 s)" in h.reason
    assert state.tenant("llm").outages == ((40.0 + 4.0, 10.0),)
    # an hour later the budget is back: the resize goes ahead, beside the old slice (a relaunch)
    state, ds = run(spec, state, stream(3700, 3, 0.020, llm_at=target))
    (e,) = events(ds, "escalate")
    assert e.lever == "resize" and e.evidence["outage_s"] == 10.0 and e.evidence["move"] == "beside"


def test_a_resize_in_place_is_charged_the_reconfiguration_plus_the_relaunch():
    """Growing the victim's own instance destroys it: stop, reconfigure (18 s), relaunch (5 s)."""
    ladder = {"A100-SXM4-40GB": ("1g.5gb", "7g.40gb")}
    spec = example_spec(Policy(**UNPRICED_OUTAGES, mig_ladder=ladder, outage_budget_share=None, cost_margin=None))
    t = spec.tenants["llm"]
    assert t.outage_s(MoveKind.IN_PLACE) == 23.0 and t.outage_s(MoveKind.BESIDE) == 5.0
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    state, _ = run(spec, state, stream(50, 1, 0.020, llm_at=target))
    state, ds = run(spec, state, stream(100, 3, 0.020, llm_at=target))
    (e,) = events(ds, "escalate")
    # A 7g.40gb takes the whole GPU: the victim's own slice must go.
    assert e.lever == "resize" and e.evidence["move"] == "in_place" and e.evidence["outage_s"] == 23.0


def test_resize_is_kept_while_the_tail_would_come_back_on_the_smaller_slice():
    """Calm on the bigger slice is not proof the cause has gone: the good windows' peak, scaled by
    the slice ratio (3g -> 2g: 1.5x), must still be good on the smaller slice before it is given back."""
    spec = example_spec(NO_OUTAGE_LIMIT)
    state, _, desired = _placed_then_resized(spec)
    big = desired.placements["llm"]
    assert big.profile == "3g.20gb"
    layouts = {**EXAMPLE_LAYOUTS, **desired.layouts}
    # 10 ms is good (< 0.8 x 15 ms) on the 3g, but 15 ms predicted on the 2g: keep the slice
    state, ds = run(spec, state, stream(110, 60, 0.010, etl=1e8, llm_at=big, layouts=layouts))
    # the guard beneath the kept slice is lifted (it costs etl throughput and holds nothing now)
    assert [(e.lever, e.level_to) for e in events(ds, "release")] == [("guard", "resized")]
    assert all(st.lever != "guard" for st in state.tenant("llm").stack)
    (h,) = events(ds, "hold")
    assert h.reason.startswith("keep the larger slice") and h.evidence["predicted_tail_s"] == pytest.approx(0.015)
    assert state.tenant("llm").level is Level.RESIZED
    # 6 ms (9 ms predicted): the slice goes back once the 10 ms windows have left the horizon (24)
    state, ds = run(spec, state, stream(240, 20, 0.006, etl=1e8, llm_at=big, layouts=layouts))
    assert not events(ds, "release")
    state, ds = run(spec, state, stream(280, 10, 0.006, etl=1e8, llm_at=big, layouts=layouts))
    assert [(e.kind, e.lever) for e in events(ds, "release")] == [("release", "resize")]


def test_after_a_move_its_own_backlog_is_not_evidence():
    """The requests held by the move's outage finish late after it: for the outage again (at least
    a cooldown) the tenant's windows count neither way, and then the evidence starts afresh."""
    spec = example_spec(MECHANICS)
    state = _judged(spec)
    state, ds = run(spec, state, stream(40, 3, 0.020))
    target = ds[-1].desired.placements["llm"]
    outage = spec.tenants["llm"].move_outage_s
    state, ds = run(spec, state, stream(50, 1, 0.010, llm_at=target))
    (done,) = events(ds, "complete")
    settle = max(spec.policy.cooldown_s, outage)
    assert done.evidence["settle_s"] == settle
    ctl = state.tenant("llm")
    assert ctl.settle_until == 50 + settle and ctl.evidence.up == 0.0
    # the backlog drains with awful windows: no trigger, no evidence, no escalation
    state, ds = run(spec, state, stream(52, int(settle / 2) - 1, 0.200, llm_at=target))
    assert not events(ds, "escalate") and state.tenant("llm").evidence.up == 0.0
    # after the settle, a tail that still violates is judged again
    state, ds = run(spec, state, stream(50 + settle + 2, 6, 0.200, llm_at=target))
    assert state.tenant("llm").evidence.up > 0 or events(ds, "escalate")


def _relieved(spec):
    state = _guarded(spec)
    state, _ = run(spec, state, stream(6, 28, 0.010, etl=1.5e9))
    state, ds = run(spec, state, stream(64, 1, 0.010, etl=1.5e9))
    (e,) = events(ds)
    assert e.reason.startswith("relieve the guard")
    target = ds[-1].desired.placements["llm"]
    state, _ = run(spec, state, stream(70, 1, 0.010, etl=1.5e9, llm_at=target))
    return state, target


def test_a_relief_move_is_not_undone_for_nothing():
    """Once the tail is good on the new instance and the old one is quiet again, going back would
    take the tenant away for its relaunch and buy nothing: it stays, the level is released."""
    from fsm.topology import Tier

    spec = example_spec(Policy(**UNPRICED_OUTAGES, io_share_tier=Tier.SWITCH, guard_cost_share=None))
    assert spec.tenants["llm"].move_outage_s > spec.tenants["llm"].slo_s
    state, target = _relieved(spec)
    state, ds = run(spec, state, stream(72, 150, 0.005, etl=0.0, llm_at=target))
    (e,) = events(ds, "release")
    assert (e.level_from, e.level_to) == ("placed", "steady")
    assert "moving back would cost requests for nothing" in e.reason
    assert ds[-1].desired.placements.get("llm", target) == target
    # without the cost check (the reference ladder) it goes home
    ref = example_spec(Policy(**UNPRICED_OUTAGES, io_share_tier=Tier.SWITCH, guard_cost_share=None, cost_margin=None))
    state, target = _relieved(ref)
    state, ds = run(ref, state, stream(72, 150, 0.005, etl=0.0, llm_at=target))
    (e,) = events(ds, "release")
    assert e.reason.startswith("move back to")


def test_a_guard_that_does_not_hold_the_tail_is_not_relieved_by_a_move():
    """Relief pays an outage to free the capped tenant; it is for a guard that works. A binding
    guard under which 1.3% of the requests stay over the SLO (over the budget, yet too little for
    the evidence to grow: it sits at zero) is not relieved by a move."""
    from fsm.observation import LatencyWindow
    from fsm.topology import Tier

    def counted(obs, over):
        llm = obs.tenants["llm"]
        lat = LatencyWindow(200, over_slo=over)
        return replace(obs, tenants={**obs.tenants, "llm": replace(llm, latency=lat)})

    spec = example_spec(Policy(**UNPRICED_OUTAGES, io_share_tier=Tier.SWITCH, guard_cost_share=None))
    state = _guarded(spec)
    state, ds = run(spec, state, [counted(o, 2.6) for o in stream(6, 40, 0.010, etl=1.5e9)])
    ctl = state.tenant("llm")
    assert ctl.evidence.up == 0.0 and ctl.evidence.burn_rate(0.01) > 1.0
    assert not [e for e in events(ds) if e.reason.startswith("relieve the guard")]
    # the same guard with the tail inside its budget is relieved
    state = _guarded(spec)
    state, ds = run(spec, state, [counted(o, 0.0) for o in stream(6, 40, 0.010, etl=1.5e9)])
    assert [e for e in events(ds) if e.reason.startswith("relieve the guard")]


def test_a_larger_slice_is_given_back_only_after_a_calm_budget_window():
    """With the cost check on, giving a slice back costs an outage (the relaunch, longer than the
    SLO): the slice stays until the tail has been calm for a whole outage budget window, then goes."""
    window = 600.0
    spec = example_spec(
        Policy(**UNPRICED_OUTAGES, outage_budget_share=None, cost_margin=1e-9, outage_budget_window_s=window)
    )
    state, _placed_at, desired = _placed_then_resized(spec)
    last_bad = state.tenant("llm").last_bad_t
    assert last_bad is not None and 100 <= last_bad <= 106
    big = desired.placements["llm"]
    at, lay = big, {**EXAMPLE_LAYOUTS, **desired.layouts}
    t, log = 106.0, []
    while t < last_bad + window + 200:
        d = decide(state, example_observation(t, 0.005, 1e8, llm_at=at, layouts=lay), spec)
        state = d.state
        log.extend((e.t, e.kind, e.lever, e.reason) for e in d.events)
        at = d.desired.placements.get("llm", at)
        lay = {**lay, **d.desired.layouts}
        t += 2.0
    holds = [x for x in log if x[1] == "hold" and x[2] == "resize"]
    assert holds and "calm for 600 s" in holds[0][3], log
    (give_back,) = [x for x in log if x[1] == "release" and x[2] == "resize"]
    assert give_back[0] >= last_bad + window  # not before a whole calm window
    assert state.tenant("llm").last_bad_t == last_bad  # calm since


def test_a_slice_whose_give_back_and_return_the_budget_cannot_pay_stays():
    spec = example_spec(
        Policy(**UNPRICED_OUTAGES, cost_margin=1e-9, outage_budget_window_s=600.0, outage_budget_share=None)
    )
    state, _, desired = _placed_then_resized(spec)
    big = desired.placements["llm"]
    lay = {**EXAMPLE_LAYOUTS, **desired.layouts}
    state, _ = run(spec, state, stream(110, 1, 0.005, llm_at=big, layouts=lay))  # the resize is done
    assert state.tenant("llm").pending is None
    # Then a budget of 1 x 1% x 600 s = 6 s: one relaunch (5 s) fits, going back and returning not.
    spec = replace(spec, policy=replace(spec.policy, outage_budget_share=1.0))
    outage = min(spec.tenants["llm"].outage_s(k) for k in MoveKind)
    assert 2 * outage > 6.0 >= outage, outage
    t = 2000.0  # calm for longer than the window since, the earlier outages out of it
    ctl = state.tenant("llm")
    assert ctl.last_bad_t is not None and t - ctl.last_bad_t > 600.0
    log = []
    for i in range(60):
        d = decide(state, example_observation(t + 2.0 * i, 0.005, 1e8, llm_at=big, layouts=lay), spec)
        state = d.state
        log.extend((e.kind, e.lever, e.reason) for e in d.events)
    assert (
        "hold",
        "resize",
        "keep the larger slice: the outage budget cannot pay for giving it back and growing it again",
    ) in log, log
    assert not [x for x in log if x[0] == "release" and x[1] == "resize"]


def test_a_placement_search_that_found_nowhere_is_not_repeated_within_the_cooldown():
    """A hold whose search found no instance to go to gives that answer again until cooldown_s has
    passed (ranking every free instance of the host again a tick later finds the same); then it
    looks again, and takes what has been freed meanwhile."""
    policy = Policy(**UNPRICED_OUTAGES, guards=False, mps=False, mig=False, cost_margin=None, outage_budget_share=None)
    spec = example_spec(policy)
    full = {**EXAMPLE_LAYOUTS, "gpu0": (Slot(0, "2g.10gb"),), "gpu3": (Slot(6, "1g.5gb"),)}
    state, ds = run(spec, ControllerState(), stream(0, 3, 0.020, layouts=full))
    (h,) = events(ds, "hold")
    assert "place: no quieter instance" in h.reason  # gpu1's free 3g is on the ETL's switch
    looked = h.t
    # A 2g instance is free on gpu3 from the next tick on: not seen before the cooldown is over.
    freed = {**full, "gpu3": (Slot(0, "2g.10gb"), Slot(6, "1g.5gb"))}
    state, ds = run(spec, state, stream(looked + 2, 40, 0.020, layouts=freed))
    (e,) = events(ds, "escalate")
    assert (e.lever, ds[-1].desired.placements["llm"]) == ("place", InstanceRef("gpu3", "2g.10gb", 0))
    assert looked + spec.policy.cooldown_s <= e.t <= looked + spec.policy.cooldown_s + 3 * 2.0
    assert not events(ds, "hold")  # the same answer in between: no new hold event
