"""fsm.outage: each kind of move's timeline and outage, by hand (relaunch 5 s, reconfiguration 18 s)."""

from __future__ import annotations

import pytest

from fsm.outage import MoveKind, MoveTimeline, move_outage_s, move_timeline


@pytest.mark.parametrize(
    ("kind", "warm", "expect"),
    [
        # into an existing instance: restart stops now, serves after the relaunch
        (MoveKind.EXISTING, False, MoveTimeline(0.0, 0.0, 5.0)),
        # warm: the new copy starts beside the old (5 s), then the 1 s switch-over
        (MoveKind.EXISTING, True, MoveTimeline(0.0, 5.0, 6.0)),
        # beside its own instance: serves while the GPU is reconfigured, then the relaunch
        (MoveKind.BESIDE, False, MoveTimeline(18.0, 18.0, 23.0)),
        (MoveKind.BESIDE, True, MoveTimeline(18.0, 23.0, 24.0)),
        # its own instance destroyed: stopped first, reconfiguration, relaunch; warm cannot help
        (MoveKind.IN_PLACE, False, MoveTimeline(18.0, 0.0, 23.0)),
        (MoveKind.IN_PLACE, True, MoveTimeline(18.0, 0.0, 23.0)),
    ],
)
def test_timelines_by_hand(kind: MoveKind, warm: bool, expect: MoveTimeline) -> None:
    tl = move_timeline(kind, relaunch_s=5.0, reconfig_s=18.0, warm=warm, gap_s=1.0)
    assert tl == expect
    assert move_outage_s(kind, 5.0, 18.0, warm, 1.0) == expect.up_at - expect.down_at


def test_a_resize_in_place_costs_more_than_a_move() -> None:
    # The old model charged 18 s for any resize and 20 s for a vLLM move: backwards.
    vllm = {"relaunch_s": 60.0, "reconfig_s": 18.0}
    assert move_outage_s(MoveKind.IN_PLACE, **vllm) == 78.0
    assert move_outage_s(MoveKind.EXISTING, **vllm) == move_outage_s(MoveKind.BESIDE, **vllm) == 60.0
