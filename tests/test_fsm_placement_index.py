"""The per-tick root-complex index used by placement scoring gives exactly what path_traffic
gives tenant by tenant (the definition), including traffic on devices the topology does not know."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fsm.diagnosis import Traffic, path_traffic
from fsm.examples import example_observation, example_spec
from fsm.observation import IoRate
from fsm.placement import rc_traffic
from fsm.topology import Tier


def _by_definition(spec, traffic, gpu):
    out = {}
    for t in spec.tenants.values():
        a = path_traffic(spec, traffic, gpu, t, Tier.ROOT_COMPLEX)
        if a is not None and a.bps >= spec.policy.io_aggressor_min_bps:
            out[t.name] = a.bps
    return out


@pytest.mark.parametrize("etl", [0.0, 1e8, 3e9])
@pytest.mark.parametrize("unknown_dev", [False, True])
def test_rc_index_equals_path_traffic(etl, unknown_dev):
    spec = example_spec()
    obs = example_observation(10.0, 0.02, etl)
    if unknown_dev:  # the protected db also reads a disk the topology does not know: counts everywhere
        db = obs.tenants["db"]
        obs = replace(obs, tenants={**obs.tenants, "db": replace(db, io={**db.io, "sdz": IoRate(5e8, 0.0)})})
    traffic = Traffic.build(spec, obs)
    for gpu in [g.id for g in spec.topology.gpus] + ["not-in-topology"]:
        assert rc_traffic(spec, traffic, gpu) == pytest.approx(_by_definition(spec, traffic, gpu))
    if unknown_dev:
        assert "db" in rc_traffic(spec, traffic, "gpu3")
