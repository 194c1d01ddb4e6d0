"""Journals damaged in ways a crash does not leave, found by fuzzing recovery: a record whose kind,
phase, action or snapshot key is none the journal writes, a journal file that exists and cannot be
read, a FIFO where the journal should be. Each is reported (skipped records with file and line,
errors in the summary), the rest of the journal still recovered, and nothing waits forever."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from actuators.journal import Journal, read_file
from actuators.reconciler import Reconciler, TenantActuation

NOW = 1_700_000_000.0
GROUP = "system.slice/etl.service"


def _host(tmp: Path) -> Reconciler:
    """A reconciler on a fake cgroup v2 tree with one tenant's group and one NVMe disk (259:0)."""
    (tmp / "cgroup" / GROUP).mkdir(parents=True)
    (tmp / "cgroup" / GROUP / "io.max").write_text("")
    (tmp / "cgroup" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    disk = tmp / "sys" / "devices" / "nvme" / "block" / "nvme0n1"
    disk.mkdir(parents=True)
    (disk / "dev").write_text("259:0\n")
    for d in ("class", "dev"):
        (tmp / "sys" / d / "block").mkdir(parents=True)
    (tmp / "sys" / "class" / "block" / "nvme0n1").symlink_to(disk)
    (tmp / "sys" / "dev" / "block" / "259:0").symlink_to(disk)
    (tmp / "state").mkdir(exist_ok=True)
    return Reconciler(cgroup_root=str(tmp / "cgroup"), sys_root=str(tmp / "sys"),
                      tenants={"etl": TenantActuation("etl", GROUP)}, journal_path=tmp / "state" / "journal.jsonl",
                      gpus={}, nvidia_smi="/nonexistent/nvidia-smi", mps_control="/nonexistent/mps",
                      clock=lambda: NOW, tool_timeout=2)  # fmt: skip


CAP = {"cgroup": GROUP, "dev": "259:0", "tenant": "etl", "rbps": None, "wbps": 20_000_000, "expires_at": NOW - 1}


def _snapshot(**state: Any) -> dict[str, Any]:
    books = {"throttles": [], "placements": {}, "mps": {}, "warm_moves": {}, "mig_open": {}, **state}
    return {"v": 1, "t": NOW - 100, "seq": 1, "kind": "snapshot", "state": books}


@pytest.mark.parametrize(
    ("rec", "says"),
    [
        ({"v": 1, "t": NOW - 50, "seq": 2, "kind": "thrmttle", "phase": "intent", "action": "set", **CAP},
         "unknown kind 'thrmttle'"),
        ({"v": 1, "t": NOW - 50, "seq": 2, "kind": "throttle", "phase": "intdnt", "action": "set", **CAP},
         "unknown phase 'intdnt' of a throttle record"),
        ({"v": 1, "t": NOW - 30, "seq": 2, "kind": "mps", "phase": "intent", "action": "sdt", "tenant": "etl",
          "pid": 1234, "expires_at": NOW - 1}, "unknown action 'sdt' of a mps record"),
        ({"v": 1, "t": NOW - 20, "seq": 2, "kind": "mig", "phase": "intdnt", "gpu": "gpu0", "before": [],
          "after": []}, "unknown phase 'intdnt' of a mig record"),
        ({**_snapshot(throttlds=[CAP]), "seq": 2}, "state has unknown key(s) 'throttlds'"),
    ],
    ids=["kind", "phase", "action", "mig-phase", "snapshot-key"],
)  # fmt: skip
def test_a_record_of_no_kind_the_journal_writes_is_reported_not_read_as_nothing(
    tmp_path: Path, rec: dict[str, Any], says: str
) -> None:
    """Was: read as a record of nothing, not counted, not logged; the cap or limit it carried was
    no longer owned, so never lifted, and nobody was told."""
    r = _host(tmp_path)
    lines = [_snapshot(), rec]
    (tmp_path / "state" / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = asyncio.run(r.recover())
    r.journal.close()
    assert summary["skipped"] == 1 and summary["errors"] == []
    (listed,) = summary["skipped_records"]
    assert listed.startswith(f"{tmp_path}/state/journal.jsonl:") and says in listed, listed


def test_a_record_with_a_key_twice_is_skipped_naming_the_key_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by fuzzing: the last of the two values was read (here no write cap, not 20 MB/s). Now
    the line is skipped like a torn one, counted, and logged with its file, line and key."""
    f = tmp_path / "journal.jsonl"
    cap = json.dumps({"v": 1, "t": NOW - 50, "seq": 2, "kind": "throttle", "phase": "intent", "action": "set", **CAP})
    f.write_text(
        json.dumps(_snapshot()) + "\n" + cap.replace('"wbps": 20000000', '"wbps": 20000000, "wbps": null') + "\n"
    )
    assert read_file(f)[1] == [f"{f}:2: not JSON: key 'wbps' given twice in one object"]
    j = Journal(f)
    with caplog.at_level(logging.WARNING, logger="tailguard.journal"):
        assert [r["kind"] for r in j.records()] == ["snapshot"]
    assert j.stats.skipped_lines_total == 1
    assert f"journal {f}:2: not JSON: key 'wbps' given twice in one object; the line is skipped" in caplog.text


def test_a_journal_file_that_cannot_be_read_is_reported_and_the_rest_recovered(tmp_path: Path) -> None:
    """Was: a rotated file that is a directory (EISDIR; EIO and EACCES alike) read as empty, without
    a word. The current file has no snapshot here, so the rotated one is read too."""
    r = _host(tmp_path)
    (tmp_path / "state" / "journal.jsonl.1").mkdir()
    intent = {"v": 1, "t": NOW - 50, "seq": 9, "kind": "throttle", "phase": "intent", "action": "set", **CAP}
    (tmp_path / "state" / "journal.jsonl").write_text(json.dumps(intent) + "\n")
    (tmp_path / "cgroup" / GROUP / "io.max").write_text("259:0 rbps=max wbps=20000000 riops=max wiops=max\n")
    summary = asyncio.run(r.recover())
    r.journal.close()
    assert summary["lifted"]  # the current file's intent recovered: its expired cap owned, and lifted
    why = f"journal {tmp_path}/state/journal.jsonl.1: cannot read: a directory, not a regular file"
    assert why in summary["errors"]


def test_a_fifo_at_the_journal_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Was: recovery blocked in read_bytes() on the FIFO, on the event loop: the daemon never
    started."""
    r = _host(tmp_path)
    os.mkfifo(tmp_path / "state" / "journal.jsonl")
    summary = asyncio.run(asyncio.wait_for(r.recover(), 10))
    r.journal.close()
    assert f"journal {tmp_path}/state/journal.jsonl: cannot read: a FIFO, not a regular file" in summary["errors"]


@pytest.mark.parametrize("outage", [float("nan"), -5.0, 10**401], ids=["nan", "negative", "past-float"])
def test_a_measured_outage_that_is_no_number_of_seconds_is_passed_over(tmp_path: Path, outage: Any) -> None:
    """Was: NaN and -5 s taken as measured outages (the outage metrics, the decision core's price of
    a move); a 401-digit integer made recovery raise OverflowError, and the host stayed degraded."""
    r = _host(tmp_path)
    done = {"v": 1, "t": NOW - 10, "seq": 2, "kind": "move", "phase": "done", "tenant": "etl",
            "at": "gpu0/1g.5gb@0", "outage_s": outage, "outage_kind": "restart"}  # fmt: skip
    text = json.dumps(_snapshot()) + "\n" + json.dumps(done) + "\n"
    (tmp_path / "state" / "journal.jsonl").write_text(text)
    summary = asyncio.run(r.recover())
    r.journal.close()
    assert summary["errors"] == [] and not any(r.moves.outages.values())


def test_an_mps_pid_no_process_can_have_is_skipped(tmp_path: Path) -> None:
    """Was: a 401-digit pid booked as the MPS server's, to be sent to mps-control at expiry."""
    r = _host(tmp_path)
    rec = {"v": 1, "t": NOW - 30, "seq": 2, "kind": "mps", "phase": "intent", "action": "set", "tenant": "etl",
           "pid": 10**400, "expires_at": NOW + 60}  # fmt: skip
    (tmp_path / "state" / "journal.jsonl").write_text(json.dumps(_snapshot()) + "\n" + json.dumps(rec) + "\n")
    summary = asyncio.run(r.recover())
    r.journal.close()
    assert summary["skipped"] == 1 and "not a PID" in summary["skipped_records"][0] and r.mps.owned == {}


def test_every_record_the_actuators_write_is_one_recovery_knows() -> None:
    """recovery.WRITTEN lists the kinds, phases and actions the journal holds; a record of any
    other is skipped as damaged. A writer that adds a phase without it would have its intents
    skipped after a crash: every literal kind, phase and action given to journal.append or jot in
    actuators/ must be in the list."""
    import ast

    from actuators.recovery import WRITTEN

    root = Path(__file__).resolve().parents[1] / "actuators"
    seen = 0
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in ("append", "jot") or not node.args:
                continue
            kind = node.args[0]
            if not (isinstance(kind, ast.Constant) and kind.value in WRITTEN):
                continue
            phases, actions = WRITTEN[kind.value]
            for kw in node.keywords:
                # a literal, or either literal of `"done" if ok else "failed"`
                v = kw.value
                values = [v] if isinstance(v, ast.Constant) else [v.body, v.orelse] if isinstance(v, ast.IfExp) else []
                for c in values:
                    if isinstance(c, ast.Constant) and kw.arg in ("phase", "action"):
                        allowed = phases if kw.arg == "phase" else actions
                        assert c.value in allowed, f"{f.name}:{node.lineno}: {kw.arg} {c.value!r}"
            seen += 1
    assert seen >= 25  # the writers were found (throttles, mps, mig, moves, salvage, recovery)
