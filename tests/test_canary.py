"""`tailguard replay --shadow DIR --compare CURRENT.toml CANDIDATE.toml [--from-trace]`: decisions
per host under both policies, and with --from-trace simulated outcomes, each labelled as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli import main
from replay.synth import record_simulated

SCENARIO = Path(__file__).resolve().parents[1] / "replay" / "scenarios" / "p4d-demo.toml"


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("canary")
    for i in range(2):
        record_simulated(str(SCENARIO), d / f"h{i}.jsonl", 600, seed=i + 1, host_name=f"h{i}")
    return d


def policy(path: Path, body: str) -> str:
    path.write_text("[policy]\n" + body)
    return str(path)


def test_decisions_differ_where_the_policies_do(
    traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cur = policy(tmp_path / "cur.toml", "y_windows = 3\n")
    cand = policy(tmp_path / "cand.toml", "y_windows = 6\n")
    out = tmp_path / "c.json"
    assert main(["replay", "--shadow", str(traces), "--compare", cur, cand, "--jobs", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DECISIONS (shadow replay of what each host recorded; nothing simulated)" in text
    assert "SIMULATED" not in text
    doc = json.loads(out.read_text())
    assert doc["kind"] == "fleet-canary" and len(doc["hosts"]) == 2
    for h in doc["hosts"]:
        a, b = h["decisions"]["current"], h["decisions"]["candidate"]
        assert h["simulated_outcomes"] is None
        assert h["decisions"]["first_difference"].startswith("decision 1:")
        assert a["decisions"]["escalate"] >= 1
        # Six violating windows before the first escalation instead of three: it comes later.
        assert a["seconds_at_level"].get("steady", 0) < b["seconds_at_level"].get("steady", 0)
    # The same policy twice: the same decisions.
    assert main(["replay", "--shadow", str(traces), "--compare", cur, cur, "--jobs", "1"]) == 0
    assert text.count("same decisions") == 0 and capsys.readouterr().out.count("same decisions") == 2


def test_from_trace_adds_simulated_outcomes(traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cur = policy(tmp_path / "cur.toml", "")
    cand = policy(tmp_path / "cand.toml", "cooldown_s = 600.0\ny_windows = 12\n")
    out = tmp_path / "c.json"
    rc = main(["replay", "--shadow", str(traces / "h0.jsonl"), "--compare", cur, cand, "--from-trace",
               "--jobs", "1", "--json", str(out)])  # fmt: skip
    assert rc == 0
    assert "SIMULATED OUTCOMES" in capsys.readouterr().out
    (h,) = json.loads(out.read_text())["hosts"]
    sim = h["simulated_outcomes"]
    assert sim["current"]["p99_ms"] > 0 and sim["candidate"]["p99_ms"] > 0
    assert sim["current"] != sim["candidate"]  # a slower trigger serves the tail differently


@pytest.mark.faults
def test_bad_policy_files_are_named(traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = policy(tmp_path / "good.toml", "")
    extra = tmp_path / "extra.toml"
    extra.write_text("[policy]\n[scenario]\nname = 'x'\n")
    unknown = policy(tmp_path / "unknown.toml", "y_window = 3\n")
    wrong = policy(tmp_path / "wrong.toml", 'cooldown_s = "soon"\n')
    for path, why in ((str(extra), "expected only a [policy] table"), (unknown, "unknown policy key(s) y_window"),
                      (wrong, "cooldown_s: expected float"), (str(tmp_path / "none.toml"), "cannot read")):  # fmt: skip
        assert main(["replay", "--shadow", str(traces), "--compare", good, path]) == 2
        err = capsys.readouterr().err
        assert why in err and str(Path(path).name) in err, err
    assert main(["replay", "--shadow", str(traces), "--from-trace"]) == 2
    assert "--from-trace goes with --compare" in capsys.readouterr().err


def test_a_candidate_whose_shadow_run_fails_is_a_failure(
    traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fuzzing: the candidate's failure showed as "same decisions" and exit 0."""
    import dataclasses

    from replay import canary

    real = canary.shadow_host

    def failing_candidate(args):  # type: ignore[no-untyped-def]
        hs = real(args)
        return dataclasses.replace(hs, error=f"{hs.name}: boom") if args[1].get("cooldown_s") == 31.0 else hs

    monkeypatch.setattr(canary, "shadow_host", failing_candidate)
    cur, cand = policy(tmp_path / "cur.toml", ""), policy(tmp_path / "cand.toml", "cooldown_s = 31.0\n")
    assert main(["replay", "--shadow", str(traces), "--compare", cur, cand, "--jobs", "1"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED (candidate policy): " in out and "same decisions" not in out
    assert "tailguard replay: candidate policy: " in err and "boom" in err
