"""`tailguard scenario from-trace`: a dry-run recording of a bundled scenario's simulated host gives
back that scenario's request rate, service time and aggressors' flow rates (within 10%), and the
rebuilt scenario's static p99 is within 10% of the original's."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import numpy as np
import pytest

from controller.cli import main
from replay.runner import run_host
from replay.scenario import load_scenario
from replay.synth import record_simulated
from replay.trace import read_trace

SCENARIO = Path(__file__).resolve().parents[1] / "replay" / "scenarios" / "p4d-demo.toml"


def close(got: float, want: float, tol: float = 0.10) -> bool:
    return abs(got - want) <= tol * abs(want)


def test_round_trip_from_a_dry_run_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, out = tmp_path / "rec.jsonl", tmp_path / "rebuilt.toml"
    rc = main(["record", "--out", str(trace), "--dry-run", "--simulate", str(SCENARIO), "--speed", "50",
               "--duration", "600", "--quiet", "--log-level", "WARNING"])  # fmt: skip
    assert rc == 0
    assert main(["scenario", "from-trace", str(trace), "--out", str(out)]) == 0
    assert "assumptions in its header" in capsys.readouterr().out
    text = out.read_text()
    ts = [o.t for o in read_trace(trace)[1]]
    longest = max(b - a for a, b in itertools.pairwise(ts))
    assert "# ASSUMED" in text and "Poisson" in text
    orig = tomllib.loads(SCENARIO.read_text())
    new = tomllib.loads(text)
    o_t = {t["name"]: t for t in orig["hosts"][0]["tenants"]}
    n_t = {t["name"]: t for t in new["hosts"][0]["tenants"]}
    o_req, n_req = o_t["t1"]["requests"], n_t["t1"]["requests"]
    assert close(n_req["rate"], o_req["rate"])
    assert close(n_req["compute_ms"], o_req["compute_ms"])  # on its 1-slice instance
    assert close(n_req["bytes"], o_req["bytes"])
    for name in ("t2", "t3"):  # the aggressors: per-leg rate, the legs, when they are on
        assert close(n_t[name]["demand_gbps"], o_t[name]["demand_gbps"])
        assert sorted(map(tuple, (f["path"] for f in n_t[name]["flows"]))) == sorted(
            map(tuple, (f["path"] for f in o_t[name]["flows"]))
        )
        (a, b), ((x, y),) = o_t[name]["schedule"]["on"][0], n_t[name]["schedule"]["on"]
        # An edge is known to within the tick that holds it; a loaded daemon stretches some ticks.
        assert abs(x - a) <= longest + 0.5 and abs(y - b) <= longest + 0.5, (x, y, longest)
    assert close(n_t["t3"]["sm_active"], o_t["t3"]["sm_active"])
    # Nothing recorded about latency is copied into the scenario.
    assert not any(k in text for k in ("p99_ms", "p50", "over_slo"))
    # The rebuilt host's static p99 (simulated) against the original's, same duration and seed.
    p99 = []
    for sc in (load_scenario(str(SCENARIO)), load_scenario(str(out))):
        run = run_host(sc, 0, "static", 600.0, 1)
        p99.append(float(np.quantile(run.latencies, 0.99)))
    assert close(p99[1], p99[0]), p99


@pytest.mark.faults
def test_user_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    busy = tmp_path / "busy.jsonl"  # 20 s: 4 ticks, fewer than the quiet ticks a service time needs
    record_simulated(str(SCENARIO), busy, 20)
    assert main(["scenario", "from-trace", str(busy)]) == 2
    assert f"{busy}: only 4 quiet ticks" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    lines = (tmp_path / "busy.jsonl").read_text().splitlines(keepends=True)
    bad.write_text(lines[0] + "not json\n")
    assert main(["scenario", "from-trace", str(bad)]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    assert main(["scenario", "from-trace", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
