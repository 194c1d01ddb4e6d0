"""`tailguard record --out TRACE` writes a replayable observation trace, rotated by size, and a
torn last line (a crash mid-write) is tolerated by the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.cli import main
from replay.trace import read_trace

SCENARIO = Path(__file__).resolve().parents[1] / "replay" / "scenarios" / "p4d-demo.toml"


def test_record_writes_a_trace_replay_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.jsonl"
    rc = main(
        [
            "record",
            "--out",
            str(out),
            "--simulate",
            str(SCENARIO),
            "--speed",
            "100",
            "--duration",
            "100",
            "--quiet",
            "--log-level",
            "WARNING",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "tailguard run summary" in text
    ticks = int(re.search(r"(\d+) ticks in", text)[1])  # type: ignore[index]
    header, obs = read_trace(out)
    assert header.host == "sim-p4d" and "t1" in header.spec.tenants
    got = list(obs)
    assert len(got) == ticks >= 10  # one observation per tick (100 s of 5 s ticks, fewer if overrun)
    assert [o.t for o in got] == sorted(o.t for o in got)
    assert got[-1].tenants["t1"].latency is not None
    # A crash mid-line: the reader still reads everything before it.
    with out.open("a") as f:
        f.write('{"kind": "obs", "obs": {"t": 1')
    assert len(list(read_trace(out)[1])) == len(got)


def test_record_rotates_by_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.jsonl"
    rc = main(
        [
            "record",
            "--out",
            str(out),
            "--max-bytes",
            "60000",
            "--simulate",
            str(SCENARIO),
            "--speed",
            "100",
            "--duration",
            "100",
            "--quiet",
            "--log-level",
            "WARNING",
        ]
    )
    assert rc == 0
    ticks = int(re.search(r"(\d+) ticks in", capsys.readouterr().out)[1])  # type: ignore[index]
    rotated = sorted(tmp_path.glob("trace.jsonl.*"))
    assert rotated, "no rotation happened"
    total = 0
    for p in [out, *rotated]:
        assert p.stat().st_size <= 60000 + 10000
        total += len(list(read_trace(p)[1]))
    assert total == ticks  # nothing lost (fewer than `keep` rotations)


def test_record_needs_out_and_reports_a_bad_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["record", "--simulate"])
    assert main(["record", "--out", "/tmp/x", "--simulate", "no-such-scenario"]) == 2
    assert "no such scenario" in capsys.readouterr().err
