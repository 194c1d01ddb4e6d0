"""A move off the path after a resize that did not cure the tail (fsm.ladder, fsm.tick_moves).

The ladder climbs: a move ranks below a resize, so once a tenant was resized no move was tried.
A guard whose caps did not cut the tail lowers a same-sized move's expected cure to
`unknown_cause_efficacy`, so the resize can come first; on a path an I/O aggressor still shares, a
bigger slice leaves that cause in place, and the tenant stayed over its SLO for the rest of the
run (`make demo`: in 5 of 11 runs, 82% of windows violated after the resize, by the tick's phase).
A resize that did not cure says the slice is not what holds the tail: the move off the path is
tried once more, priced without the guard's doubt, and the release steps back over both.
"""

from __future__ import annotations

from dataclasses import replace

from fsm.decide import decide
from fsm.diagnosis import Aggressor, Cause, Diagnosis
from fsm.examples import EXAMPLE_LAYOUTS, example_observation, example_spec
from fsm.mig import Slot
from fsm.observation import InstanceRef, LatencyWindow
from fsm.spec import Level, Policy
from fsm.state import ControllerState, Step, TenantCtl
from fsm.tick_moves import MoveTick
from fsm.topology import Tier

HOME = InstanceRef("gpu0", "2g.10gb", 0)
# gpu3 (off the ETL's switch) has a free 3g instance: where the resized tenant can go
LAYOUTS = {**EXAMPLE_LAYOUTS, "gpu3": (Slot(0, "2g.10gb"), Slot(2, "2g.10gb"), Slot(4, "3g.20gb"))}


def _world(over_on_path: float, ticks: int = 400):
    """A host where the tail is the ETL's path's doing: on gpu0/gpu1 (its switch) `over_on_path` of
    the 10 requests a 2 s tick are over the SLO, whatever the slice and whatever the caps; off it,
    none. The observation follows the decisions (placements and layouts applied at once)."""
    spec = example_spec(Policy(outage_warmup_s=0.0))
    state, at, lay = ControllerState(), HOME, dict(LAYOUTS)
    out = []
    for i in range(ticks):
        t = 2.0 * i
        on = at.gpu in ("gpu0", "gpu1")
        o = example_observation(t, 0.030 if on else 0.006, 3e9, llm_at=at, layouts=lay)
        window = LatencyWindow(
            10, 0.004, 0.030 if on else 0.006, 0.039 if on else 0.008, over_slo=over_on_path if on else 0.0
        )
        o = replace(o, tenants={**o.tenants, "llm": replace(o.tenants["llm"], latency=window)})
        d = decide(state, o, spec)
        state = d.state
        at = d.desired.placements.get("llm", at)
        lay = {**lay, **d.desired.layouts}
        out += [e for e in d.events if e.tenant == "llm" and e.kind != "complete"]
    return state, out, at


def test_a_resize_that_left_the_tail_on_a_shared_path_is_followed_by_a_move_off_it():
    _state, evs, at = _world(0.6)
    steps = [(e.kind, e.lever, e.level_to) for e in evs]
    assert steps[:4] == [
        ("escalate", "guard", "guarded"),
        ("release", "guard", "steady"),
        ("escalate", "resize", "resized"),
        ("escalate", "place", "placed"),
    ], steps
    resize, move = evs[2], evs[3]
    # the move was passed over at the resize on the guard's doubt (a quarter of the excess) ...
    assert resize.evidence["passed_over"]["place"].startswith("its outage would cost more than it saves")
    # ... and after it, priced as a whole cure: the bigger slice did not help, the path is what is left
    assert move.evidence["cost"]["efficacy"] == 1.0
    assert move.evidence["current"]["instance"] == "gpu0/3g.20gb@4"  # from the grown slice
    assert move.evidence["after_resize"] == (
        f"the tail still violates on gpu0/3g.20gb@4 (resized at {resize.t:.0f} s) with an I/O aggressor"
        " on its path: a move off the path is what is left"
    )
    assert move.reason.startswith("move to gpu3/3g.20gb@4")
    assert at == InstanceRef("gpu3", "3g.20gb", 4)


def test_the_release_after_the_move_steps_back_over_both_without_going_home():
    state, evs, at = _world(0.6)
    releases = [(e.lever, e.level_from, e.level_to, e.reason) for e in evs if e.kind == "release"][1:]
    assert [r[:3] for r in releases] == [("place", "placed", "resized"), ("resize", "resized", "steady")]
    # gpu0's grown slice is no longer the tenant's: nothing to give back, no move onto the noisy path
    assert releases[1][3] == "stay on gpu3/3g.20gb@4 (moved off the grown slice); release the level only"
    assert at == InstanceRef("gpu3", "3g.20gb", 4)
    assert state.tenant("llm").level is Level.STEADY and not state.tenant("llm").stack
    assert len(state.reconfigs) == 1  # the resize's; the release reconfigured nothing


def test_a_move_after_a_resize_needs_an_io_cause_on_the_path_and_comes_once():
    resized = TenantCtl(stack=(Step(Level.RESIZED, "resize", 10.0, to_instance=InstanceRef("gpu0", "3g.20gb", 4)),))
    io = Diagnosis(Cause.IO, (Aggressor("etl", 3e9, Tier.SWITCH, (("nvme0n1", 3e9),), True),))
    assert MoveTick._move_after_resize(resized, io)
    assert not MoveTick._move_after_resize(resized, Diagnosis(Cause.IO))  # no aggressor on the path
    assert not MoveTick._move_after_resize(resized, Diagnosis(Cause.COMPUTE))
    assert not MoveTick._move_after_resize(resized, None)  # a guard being judged: no diagnosis
    assert not MoveTick._move_after_resize(TenantCtl(), io)  # not resized
    moved = replace(resized, stack=(Step(Level.PLACED, "place", 5.0), *resized.stack))
    assert not MoveTick._move_after_resize(moved, io)  # the episode's move was taken already
