"""fsm.codec's records: dataclasses and named tuples (Slot) are JSON objects, read back by their type
hints, with errors that name the path."""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

import pytest

from fsm.codec import DecodeError, decode, encode
from fsm.mig import Slot
from fsm.observation import GpuSample
from fsm.state import ControllerState


class _Pair(NamedTuple):
    name: str
    weight: float = 1.0


def test_a_layout_keeps_its_json_shape_and_comes_back_as_slots() -> None:
    layout = (Slot(0, "3g.20gb"), Slot(4, "4g.20gb"))
    data = json.loads(json.dumps(encode(layout)))
    assert data == [{"start": 0, "profile": "3g.20gb"}, {"start": 4, "profile": "4g.20gb"}]
    back = decode(tuple[Slot, ...], data)
    assert back == layout and all(type(s) is Slot for s in back)
    # inside a dataclass, as observation traces carry it
    gpu = GpuSample(layout=layout)
    assert decode(GpuSample, json.loads(json.dumps(encode(gpu)))) == gpu


def test_named_tuple_defaults_and_errors_name_the_path() -> None:
    assert decode(_Pair, {"name": "a"}) == _Pair("a", 1.0)
    with pytest.raises(DecodeError, match=r"^\[1\]: missing field 'profile' of Slot"):
        decode(tuple[Slot, ...], [{"start": 0, "profile": "1g.5gb"}, {"start": 4}])
    with pytest.raises(DecodeError, match=r"^\[0\]\.start: expected an integer"):
        decode(tuple[Slot, ...], [{"start": "0", "profile": "1g.5gb"}])
    with pytest.raises(DecodeError, match=r"unknown field\(s\) gi for Slot"):
        decode(Slot, {"start": 0, "profile": "1g.5gb", "gi": 3})
    with pytest.raises(DecodeError, match="expected an object for Slot, got list"):
        decode(Slot, [0, "1g.5gb"])  # a plain list is not taken for the record


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"last_t": float("nan")}, "last_t: matches none of float | None: last_t: nan is no finite number"),
        ({"layouts": {"gpu0": [{"start": -5, "profile": "../../x"}]}}, "layouts.gpu0: ../../x@-5 is no MIG slot"),
        ({"layouts": {"gpu0": [{"start": 0, "profile": "7g.80gb"}] * 2}}, "layouts.gpu0: a slot twice"),
    ],
    ids=["nan-time", "slot-path", "slot-twice"],
)
def test_a_state_file_encode_never_writes_is_refused(change: dict[str, Any], says: str) -> None:
    """Found by fuzzing state.json: NaN or Infinity (encode() writes null for them; a NaN time
    disabled every comparison) and a layout no MIG GPU has (resumed, and sent on as the desired
    layout on every tick) were taken; the daemon starts from a clean state instead, saying why."""
    data = json.loads(ControllerState().to_json())
    data.update(change)
    with pytest.raises(ValueError, match=re.escape(says)):
        ControllerState.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"seq": -1}, "controller state: seq: -1 is below 0 (a count)"),
        ({"bad_input": {"latency: NaN": 3, "observation.t: went backwards": -2}},
         "controller state: bad_input.observation.t: went backwards: -2 is below 0 (a count)"),
        ({"tenants": {"llm": {"bad": -5}}}, "controller state: tenants.llm.bad: -5 is below 0 (a count)"),
        ({"tenants": {"llm": {"good": -1}}}, "controller state: tenants.llm.good: -1 is below 0 (a count)"),
        ({"tenants": {"llm": {"failures": -3}}}, "controller state: tenants.llm.failures: -3 is below 0 (a count)"),
        ({"tenants": {"ok": {"flaps": 2}, "llm": {"flaps": -1}}},
         "controller state: tenants.llm.flaps: -1 is below 0 (a count)"),
    ],
    ids=["seq", "bad-input", "bad", "good", "failures", "flaps"],
)  # fmt: skip
def test_a_state_file_with_a_negative_count_is_refused(change: dict[str, Any], says: str) -> None:
    """Found by fuzzing state.json: counters that only count up (and reset to 0) were resumed below
    0 (failures = -3 cut the next backoff to an eighth; a negative flaps made the dwell's 1 << flaps
    raise ValueError). The daemon starts from a clean state instead, naming the field."""
    data = json.loads(ControllerState().to_json())
    data.update(change)
    with pytest.raises(ValueError, match=f"^{re.escape(says)}$"):
        ControllerState.from_json(json.dumps(data))
    text = json.dumps(data)
    assert text.count(": -") == 1
    state = ControllerState.from_json(text.replace(": -", ": "))  # the count not negative: resumed
    assert state.seq >= 0 and min(state.bad_input.values(), default=0) >= 0
