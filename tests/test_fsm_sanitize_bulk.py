"""sanitize's bulk check (fsm.sanitize._all_fine) may only say "nothing is wrong" when the
field-by-field pass would find nothing: over random observations holding every kind of bad
number in every numeric field, sanitize with the bulk check gives exactly what the
field-by-field pass alone gives."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fsm.sanitize as san
from fsm.mig import Slot
from fsm.observation import (
    GpuSample,
    HostSample,
    InstanceRef,
    IoRate,
    LatencyWindow,
    MigSample,
    Observation,
    TenantSample,
)

GOOD_FRACTIONS = [None, 0.0, -0.0, 0.5, 1.0, 1.0 + 5e-7, 0, 1, True, False]  # fine in any field
GOOD = [*GOOD_FRACTIONS, 3.0, 2e9, 7]  # fine but in a fraction
BAD = [float("nan"), float("inf"), -float("inf"), -1.0, -3, 1.5, 1e308, 10**400, "3", Fraction(1, 2), b"", ()]
MIXED = st.sampled_from(GOOD * 6 + BAD)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    # Half of them clean but for at most one field: the bulk check must pass those, or find the one.
    clean = draw(st.booleans())
    value = st.sampled_from(GOOD_FRACTIONS) if clean else MIXED
    tenants = {}
    for k in range(draw(st.integers(0, 4))):
        lat = None
        if draw(st.booleans()):
            count = draw(st.sampled_from([0, 3, 500, 500] + ([] if clean else [-1])))
            over = draw(st.sampled_from([None, None, 2.0] + ([] if clean else [600.0, float("nan")])))
            rngs = [None, None, (1.0, 3.0)] + ([] if clean else [(3.0, 1.0), (1.0, 900.0), (1.0,), (float("nan"), 1.0)])
            rng = draw(st.sampled_from(rngs))
            if clean and count < 3:
                rng, over = None, None
            bad_samples = [] if clean else [-0.1, float("nan")]
            samples = tuple(draw(st.lists(st.sampled_from([0.01, 0.02, 0.0, *bad_samples]), max_size=4)))
            buckets = [None, None, (0.01, 0.025)] + ([] if clean else [(0.025, 0.01), (0.01,), (float("nan"), 0.1)])
            bucket = draw(st.sampled_from(buckets))
            p50, p99, p999 = draw(value), draw(value), draw(value)
            lat = LatencyWindow(count, p50, p99, p999, samples, over, rng, bucket)  # type: ignore[arg-type]
        n_io = draw(st.integers(0, 2))
        io = {f"nvme{j}n1": IoRate(draw(value), draw(value), draw(value), draw(value)) for j in range(n_io)}
        tenants[f"t{k}"] = TenantSample(
            lat, draw(value), io or None, draw(value), draw(value), InstanceRef("gpu0", "1g.5gb", k), draw(value),
            draw(value),
        )  # fmt: skip
    gpus = {}
    for g in range(draw(st.integers(0, 3))):
        layout = tuple(Slot(s, "1g.5gb") for s in range(draw(st.integers(0, 3))))
        gpus[f"gpu{g}"] = GpuSample(
            draw(value), draw(value), draw(value), draw(value), draw(value), draw(value), True, False, layout,
            {str(s): MigSample(draw(value), draw(value)) for s in layout},
        )  # fmt: skip
    host = None
    if draw(st.booleans()):
        rate = st.sampled_from(GOOD[1:]) if clean else MIXED  # None is bad here
        host = HostSample({"nvme0n1": draw(rate)}, {"eth0": draw(rate)}, {c: draw(rate) for c in range(3)})
    obs = Observation(1.0, tenants, gpus, host)
    if clean and tenants and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(tenants)))
        obs.tenants[name] = replace(obs.tenants[name], cpu_pressure=draw(st.sampled_from(BAD)))  # type: ignore[index]
    return obs


CASES: Counter[str] = Counter()


def slow(obs: Observation) -> tuple[Observation, object]:
    real = san._all_fine
    san._all_fine = lambda o: False
    try:
        return san.sanitize(obs)
    finally:
        san._all_fine = real


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observations())
def test_bulk_check_agrees_with_the_field_by_field_pass(obs: Observation) -> None:
    CASES["clean" if san._all_fine(obs) else "look closer"] += 1
    try:
        want = slow(obs)
    except (TypeError, OverflowError):
        # The field-by-field pass raises on some non-numbers (a str compared with a float, an int
        # too large for a float); the bulk check must then not vouch for the observation either.
        assert not san._all_fine(obs)
        return
    got = san.sanitize(obs)
    assert got == want
    if not want[1]:
        assert got[0] is obs  # nothing wrong: the very same object


def test_both_verdicts_were_drawn() -> None:
    CASES.clear()
    test_bulk_check_agrees_with_the_field_by_field_pass()
    assert CASES["clean"] >= 40 and CASES["look closer"] >= 40, CASES


def test_the_bulk_check_passes_a_clean_big_observation() -> None:
    """The point of it: a clean observation is vouched for without the field-by-field pass."""
    layout = tuple(Slot(s, "1g.5gb") for s in range(7))
    gpus = {f"gpu{g}": GpuSample(4e9, 3e9, 0.0, 0.6, 0.5, 0.4, True, False, layout,
                                 {str(s): MigSample(0.5, 0.3) for s in layout}) for g in range(16)}  # fmt: skip
    tenants = {f"t{k}": TenantSample(LatencyWindow(500, 0.002, 0.008, 0.011, over_slo=2.0, over_slo_range=(1.0, 3.0)),
                                     250.0, {"nvme0n1": IoRate(1e8, 1e7, 1000.0, 100.0)}, 0.05, 0.02)
               for k in range(32)}  # fmt: skip
    obs = Observation(1.0, tenants, gpus, HostSample({"nvme0n1": 2e9}, {"eth0": 1e9}, {c: 2000.0 for c in range(96)}))
    assert san._all_fine(obs)
    assert san.sanitize(obs)[0] is obs


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 1.5])
def test_one_bad_fraction_among_many_is_found(bad: float) -> None:
    layout = tuple(Slot(s, "1g.5gb") for s in range(7))
    inst = {str(s): MigSample(0.5, 0.3) for s in layout}
    inst["1g.5gb@6"] = MigSample(0.5, bad)
    obs = Observation(1.0, {}, {"gpu0": GpuSample(util=0.5, layout=layout, instances=inst)})
    assert not san._all_fine(obs)
    clean, reasons = san.sanitize(obs)
    assert list(reasons) == [f"gpu.gpu0.mig.1g.5gb@6.dram_active: {san._bad(bad, True)}"]
    assert clean.gpus["gpu0"].instances["1g.5gb@6"].dram_active is None


def test_the_bulk_check_reads_every_numeric_field() -> None:
    """A numeric field added to an observation class must be read by the bulk check too (else it
    gives up and every tick takes the slow pass)."""
    assert san.fields_read_match()
    for cls, (plain, unit) in san.FIELDS_READ.items():
        assert {n for n, _ in san._numeric_fields(cls)} == plain | unit, cls
