"""fsm.evolve.evolve gives what dataclasses.replace gives: the same class and field values, the
original untouched, frozen still; classes it cannot copy field by field and unknown fields go to
replace() itself (its errors included)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fsm.evidence import EvidenceParams, SloEvidence
from fsm.evolve import _plan, evolve
from fsm.observation import InstanceRef
from fsm.spec import Level
from fsm.state import Pending, Step, TenantCtl


def _values(obj: Any) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))


def _ctl() -> TenantCtl:
    step = Step(Level.PLACED, "place", 5.0, from_instance=InstanceRef("gpu0", "1g.5gb", 0))
    return TenantCtl(bad=2, stack=(step,), pending=Pending("tenant:a", "place", 5.0), recent=(0.1, 0.2),
                     evidence=SloEvidence(up=1.5, t=3.0), outages=((1.0, 2.0),), last_reason="x")  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [{}, {"bad": 0}, {"good": 3, "last_reason": "held", "target": InstanceRef("gpu1", "2g.10gb", 2)},
     {f.name: getattr(TenantCtl(), f.name) for f in dataclasses.fields(TenantCtl)}],  # every field
)  # fmt: skip
def test_evolve_is_replace(changes: dict[str, Any]) -> None:
    ctl = _ctl()
    before = _values(ctl)
    got, want = evolve(ctl, **changes), dataclasses.replace(ctl, **changes)
    assert type(got) is TenantCtl
    assert got == want and _values(got) == _values(want) and hash(got.stack) == hash(want.stack)
    assert _values(ctl) == before  # the original is untouched
    assert got is not ctl
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.bad = 9  # type: ignore[misc]


def test_evolve_of_other_state_classes() -> None:
    step = Step(Level.GUARDED, "guard", 1.0, aggressors=("b",))
    assert evolve(step, t=2.0) == dataclasses.replace(step, t=2.0)
    ev = SloEvidence(up=1.0, n_recent=4.0)
    assert evolve(ev, up=0.0) == dataclasses.replace(ev, up=0.0)


def test_classes_it_does_not_copy_go_to_replace() -> None:
    # EvidenceParams derives fields in __post_init__: only replace() (which runs it) is right.
    assert _plan(EvidenceParams) is None
    p = evolve(EvidenceParams(), alpha=1e-3)
    assert p.h == dataclasses.replace(EvidenceParams(), alpha=1e-3).h

    @dataclasses.dataclass(frozen=True)  # no slots: may hold more than its fields
    class Plain:
        a: int = 0

    assert _plan(Plain) is None and evolve(Plain(), a=1) == Plain(1)
    assert _plan(TenantCtl) is not None


def test_unknown_field_raises_as_replace_does() -> None:
    with pytest.raises(TypeError):
        evolve(_ctl(), no_such_field=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        dataclasses.replace(_ctl(), no_such_field=1)  # type: ignore[call-arg]
