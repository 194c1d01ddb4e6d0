"""The planner's fast paths in fsm/mig.py answer exactly what the plain rules answer: is_valid is
`not layout_problems` without the messages, the profile memo gives what the table scan gives (and
the same errors), normalise keeps Slot's own order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.mig import MODELS, GpuModel, Slot, is_valid, layout_problems, normalise

MODELS_SORTED = sorted(MODELS.values(), key=lambda m: m.key)
NAMES = sorted({p.name for m in MODELS_SORTED for p in m.profiles})
REFS = [*NAMES, "MIG 1g.5gb", "MIG 3g.40gb", "19", "9", "0", "nope", " 3g.20gb ", ""]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[GpuModel, list[Slot]]:
    """Slots mostly of the model's own profiles at their own starts, so that many layouts are valid."""
    m = draw(st.sampled_from(MODELS_SORTED))
    own = st.sampled_from(m.profiles).flatmap(lambda p: st.sampled_from(p.placements).map(lambda s: Slot(s, p.name)))
    other = st.builds(Slot, st.integers(0, 8), st.sampled_from(REFS))
    return m, draw(st.lists(st.one_of(own, own, own, other), max_size=5))


@settings(max_examples=600, deadline=None)
@given(layouts())
def test_is_valid_is_not_layout_problems(case: tuple[GpuModel, list[Slot]]) -> None:
    m, layout = case
    VERDICTS[is_valid(m, layout)] += 1
    assert is_valid(m, layout) == (not layout_problems(m, layout))
    assert normalise(layout) == tuple(sorted(layout))


VERDICTS = {True: 0, False: 0}


def test_both_verdicts_were_drawn() -> None:
    VERDICTS.update({True: 0, False: 0})
    test_is_valid_is_not_layout_problems()
    assert VERDICTS[True] > 60 and VERDICTS[False] > 60, VERDICTS


def _scan(m: GpuModel, ref: str | int) -> object:
    found = m._find(ref)
    return found if found is not None else KeyError


@pytest.mark.parametrize("model", MODELS_SORTED, ids=lambda m: m.key)
def test_profile_memo_answers_what_the_scan_answers(model: GpuModel) -> None:
    refs: list[str | int] = [*REFS, 19, 20, 15, 14, 9, 5, 0, 99]
    for _ in range(2):  # the second round comes from the memo
        for ref in refs:
            want = _scan(model, ref)
            if want is KeyError:
                with pytest.raises(KeyError, match="has no MIG profile"):
                    model.profile(ref)
                assert not model.has_profile(ref)
            else:
                assert model.profile(ref) is want
    # True == 1 and 1.0 == 1 as dict keys: they must not be answered from 1's or 0's memo entry.
    for ref in (True, False):
        want = _scan(model, ref)
        assert model.has_profile(ref) == (want is not KeyError)
        if want is not KeyError:
            assert model.profile(ref) is want
    with pytest.raises(AttributeError):
        model.profile(1.0)  # type: ignore[arg-type]  # a float is no profile reference (as before)
    fresh = GpuModel(model.name, model.key, model.memory_mib, model.profiles, model.pci_device_ids)
    assert fresh == model and hash(fresh) == hash(model)  # the memo is no part of the model's value
