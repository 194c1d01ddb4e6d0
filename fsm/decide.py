"""decide(): one controller tick. PLACEHOLDER being replaced by the full ladder (issue 2)."""

from __future__ import annotations

from dataclasses import dataclass

from fsm.desired import DecisionEvent, DesiredState
from fsm.observation import Observation
from fsm.spec import HostSpec
from fsm.state import ControllerState


@dataclass(frozen=True, slots=True)
class Decision:
    state: ControllerState
    desired: DesiredState
    events: tuple[DecisionEvent, ...]


def decide(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
    return Decision(state, DesiredState(t=obs.t, enforce=spec.policy.enforce), ())
