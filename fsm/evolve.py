"""evolve(obj, **changes): dataclasses.replace for the state's frozen, slotted dataclasses, cheaper.

replace() builds a dict of every field read through getattr, then calls the generated __init__,
which sets each field through object.__setattr__ from Python: for TenantCtl's 27 fields that was
about a fifth of a tick on which four victims escalate (issue 10's decide() budget). evolve reads
all fields at once (operator.attrgetter) and sets them through the slots' own setters driven by
map(operator.call, ...), so both loops run in C: 2.5 times as fast for TenantCtl. Same class, same
field values, no __init__ run: only for classes where that is all replace() does (every field in
__init__, no __post_init__, the generated __init__, slots and nothing else); any other class, or an
unknown field name, goes to replace() itself, errors included. tests/test_fsm_evolve.py checks it.
"""

from __future__ import annotations

import dataclasses
from itertools import repeat
from operator import attrgetter, call
from typing import TYPE_CHECKING, Any

# (every field's value getter, every field's slot setter in the same order, name -> slot setter)
_Plan = tuple[Any, tuple[Any, ...], dict[str, Any]]
_PLANS: dict[type, _Plan | None] = {}
_new = object.__new__
_UNKNOWN: Any = object()  # no plan made yet (None: a plan that says use replace())


def _plan(cls: type) -> _Plan | None:
    """How to copy an instance of `cls` field by field, or None when only replace() will do."""
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        return None
    fs = dataclasses.fields(cls)
    names = tuple(f.name for f in fs)
    init = cls.__dict__.get("__init__")
    if (
        not names
        or any(not f.init for f in fs)
        or init is None
        or getattr(getattr(init, "__code__", None), "co_filename", None) != "<string>"  # the generated one
        or getattr(cls, "__dictoffset__", 1) != 0  # no slots: an instance may hold more than its fields
        or set(getattr(cls, "__slots__", ())) != set(names)
    ):
        return None
    setters = {n: getattr(cls, n).__set__ for n in names}  # the slots' own setters, as frozen __init__ sets
    get_all = attrgetter(*names) if len(names) > 1 else (lambda o, g=attrgetter(names[0]): (g(o),))
    return get_all, tuple(setters.values()), setters


def _plan_of(cls: type) -> _Plan | None:
    """_plan(cls), made once per class."""
    try:
        return _PLANS[cls]
    except KeyError:
        plan = _PLANS[cls] = _plan(cls)
        return plan


def field_setters(cls: type) -> tuple[Any, ...]:
    """The slot setters of a plain frozen, slotted dataclass, in its fields' order: a constructor
    spelled out with them (obj = object.__new__(cls); s1(obj, v1); ...) builds the same value as
    cls(v1, ...) at half the cost of the generated __init__, which goes through object.__setattr__
    (for the few classes built many times per tick; each has a test that the values are equal)."""
    plan = _plan_of(cls)
    if plan is None:
        raise TypeError(f"{cls.__name__}: not a plain frozen, slotted dataclass")
    return plan[1]


def _evolve(obj: Any, /, **changes: Any) -> Any:
    cls = obj.__class__
    plan = _PLANS.get(cls, _UNKNOWN)
    if plan is _UNKNOWN:
        plan = _plan_of(cls)
    if plan is None:
        return dataclasses.replace(obj, **changes)
    get_all, setters, by_name = plan
    new = _new(cls)
    any(map(call, setters, repeat(new), get_all(obj)))  # a setter returns None: any() runs them all
    try:
        for name, value in changes.items():
            by_name[name](new, value)
    except KeyError:  # not a field: replace() says so, in its words
        return dataclasses.replace(obj, **changes)
    return new


def assign_fresh(obj: Any, /, **changes: Any) -> None:
    """Set fields of `obj` in place, through the same slot setters as evolve(). Only for an object
    its caller made moments ago and nobody else holds yet (a decide() tick's own copy of a tenant's
    record, fsm.ladder), where a second copy would be thrown away at once. Raises for a class
    evolve() cannot copy field by field or a name that is not a field."""
    cls = obj.__class__
    plan = _plan_of(cls)
    if plan is None:
        raise TypeError(f"{cls.__name__}: not a plain frozen, slotted dataclass")
    by_name = plan[2]
    for name, value in changes.items():
        try:
            setter = by_name[name]
        except KeyError:
            raise TypeError(f"{cls.__name__} has no field {name!r}") from None
        setter(obj, value)


if TYPE_CHECKING:
    from dataclasses import replace as evolve  # mypy checks the field names and types as for replace()
else:
    evolve = _evolve
