"""A sensitive tenant's restarts told from its cgroup's processes (controller/signals/procs.py):
whatever its latency source, a restart replaces every process the cgroup listed, and the collector
reports it as the Prometheus sampler reports a histogram's reset (TenantSample.restarted_s), once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from test_sig_cgroup import _v2_tree

from controller.config import parse_config
from controller.signals.base import ParseError
from controller.signals.cgroup import CgroupSampler
from controller.signals.collect import SignalCollector, default_samplers
from controller.signals.latency import JsonlLatencySampler
from controller.signals.procs import ProcessTable, RestartWatch, parse_cgroup_procs, parse_stat_starttime
from fsm.topology import empty_topology

# A real /proc/PID/stat line (this VM's python3, proc(5)'s 52 fields), the command name changed to
# one with a space and parentheses, as a thread name may be; its start time (field 22) is 94035.
STAT = (
    "4033 (vllm (api) x) R 4030 4030 1224 0 -1 4194304 1657 0 0 0 1 1 0 0 20 0 1 0 94035 16658432 1012"
    " 18446744073709551615 94633398988800 94633401815653 140736143513376 0 0 0 0 16781312 134217730 0 0 0"
    " 17 1 0 0 0 0 0 94633402654896 94633402796840 94633414852608 140736143518931 140736143518957"
    " 140736143518957 140736143519717 0\n"
)


def _proc(root: Path, pid: int, start: int) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(STAT.replace("4033 ", f"{pid} ", 1).replace(" 94035 ", f" {start} ", 1))


def test_cgroup_procs_one_id_a_line() -> None:
    assert parse_cgroup_procs("4033\n4040\n\n17\n") == frozenset({4033, 4040, 17})
    assert parse_cgroup_procs("") == frozenset()
    with pytest.raises(ParseError, match="line 2: 0: a process outside tailguard's pid namespace"):
        parse_cgroup_procs("4033\n0\n", "g/cgroup.procs")  # the kernel's pid_vnr() for one not visible
    for bad in ("4033 4040\n", "-5\n", "١\n", "12345678901\n", "x\n"):
        with pytest.raises(ParseError, match=r"g/cgroup\.procs: line 1: not a process id"):
            parse_cgroup_procs(bad, "g/cgroup.procs")


def test_stat_start_time_after_the_last_parenthesis() -> None:
    assert parse_stat_starttime(STAT) == 94035
    assert parse_stat_starttime(STAT.replace("(vllm (api) x)", "(python3)")) == 94035
    with pytest.raises(ParseError, match="p/stat: line 1: no '\\(comm\\)' field"):
        parse_stat_starttime("4033 python3 R 1 2 3", "p/stat")
    with pytest.raises(ParseError, match="the start time is field 22"):
        parse_stat_starttime("4033 (x) R 1 2 3\n", "p/stat")
    with pytest.raises(ParseError, match="starttime"):
        parse_stat_starttime(STAT.replace(" 94035 ", " -1 "), "p/stat")


def test_the_table_reads_a_start_time_once_and_forgets_an_id_gone(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 500)
    _proc(tmp_path, 11, 501)
    t = ProcessTable(str(tmp_path))
    ids = frozenset({10, 11, 12})  # 12 exited between the list and its stat: left out
    assert t.processes(ids) == frozenset({(10, 500), (11, 501)})
    _proc(tmp_path, 10, 999)  # not read again while the id stays listed
    t.forget(ids)
    assert t.processes(ids) == frozenset({(10, 500), (11, 501)})
    t.forget(frozenset({11}))
    assert t.processes(frozenset({11})) == frozenset({(11, 501)})
    # 10 went away, so its id given out again is read again: another process
    assert t.processes(ids) == frozenset({(10, 999), (11, 501)})


def test_the_real_proc_gives_this_process_a_start_time() -> None:
    me = os.getpid()
    ((pid, start),) = ProcessTable().processes(frozenset({me}))
    assert pid == me and start > 0


A, B, C = frozenset({(1, 100), (2, 100)}), frozenset({(7, 900), (8, 901)}), frozenset({(2, 100), (9, 950)})


def test_a_restart_is_every_process_replaced_and_is_reported_when_it_serves_again() -> None:
    """A JSONL tenant: its processes replaced at 30 s (last seen at 20 s), windows empty while the
    new copy loads, the first window with requests (at 60 s) says so: 40 s since it was last seen."""
    w = RestartWatch()
    assert w.update("llm", 10.0, A, None, 5, True) is None
    assert w.update("llm", 20.0, A, None, 5, True) is None
    assert w.update("llm", 30.0, B, None, 0, True) is None  # replaced, not serving yet
    assert w.update("llm", 40.0, B, None, None, True) is None  # no window
    assert w.update("llm", 60.0, B, None, 3, True) == 40.0
    assert w.update("llm", 70.0, B, None, 3, True) is None  # reported once


def test_one_process_kept_is_no_restart_and_an_empty_group_between_is_one() -> None:
    w = RestartWatch()
    w.update("llm", 10.0, A, None, 1, True)
    assert w.update("llm", 20.0, C, None, 1, True) is None  # pid 2 lived on: a worker replaced
    assert w.update("llm", 30.0, frozenset(), None, 0, True) is None  # all gone
    assert w.update("llm", 40.0, None, None, None, True) is None  # not read
    assert w.update("llm", 50.0, B, None, 2, True) == 30.0  # since C was last seen


def test_without_a_window_to_wait_for_it_is_reported_at_once() -> None:
    """A tenant whose latency comes over MQTT (pushed to the daemon, not the collector) or not at all."""
    w = RestartWatch()
    w.update("llm", 10.0, A, None, None, False)
    assert w.update("llm", 12.0, B, None, None, False) == 2.0


def test_the_samplers_own_report_passes_and_one_restart_is_reported_once() -> None:
    w = RestartWatch()
    assert w.update("llm", 10.0, None, 25.0, 4, True) == 25.0  # a Prometheus reset, no cgroup
    w.update("llm", 20.0, A, None, 4, True)
    assert w.update("llm", 30.0, B, None, None, True) is None  # scrape refused while it loads
    assert w.update("llm", 90.0, B, 50.0, 6, True) == 70.0  # both say it: once, the longer span
    assert w.update("llm", 95.0, B, None, 6, True) is None
    w.forget_missing({})
    assert w.seen == {}


CONFIG = """
[host]
cgroup_root = "{root}"
[[tenants]]
name = "llm"
role = "sensitive"
cgroup = "system.slice/llm.service"
slo_ms = 200
[tenants.latency]
kind = "jsonl"
path = "{jsonl}"
[[tenants]]
name = "etl"
role = "bulk"
cgroup = "system.slice/etl.service"
[signals]
nvml = false
dcgm = "off"
proc_root = "{proc}"
"""


def test_the_collector_reports_a_jsonl_tenants_restart_from_its_cgroup(tmp_path: Path) -> None:
    cg, proc, jsonl = tmp_path / "cg", tmp_path / "proc", tmp_path / "llm.jsonl"
    cg.mkdir()
    _v2_tree(cg)
    llm = cg / "system.slice" / "llm.service"
    llm.mkdir()
    (llm / "cgroup.procs").write_text("101\n102\n")
    (cg / "system.slice" / "etl.service" / "cgroup.procs").write_text("300\n")
    for pid, start in ((101, 500), (102, 510), (201, 9000), (300, 40)):
        _proc(proc, pid, start)
    jsonl.write_text("")
    cfg = parse_config(CONFIG.format(root=cg, jsonl=jsonl, proc=proc))
    cgs = [s for s in default_samplers(cfg) if isinstance(s, CgroupSampler)]
    assert len(cgs) == 1 and cgs[0].procs_of == {"llm"}  # the sensitive tenants' processes only
    c = SignalCollector(cfg, empty_topology(), [cgs[0], JsonlLatencySampler("latency:llm", str(jsonl))])

    def tick(t: float, lines: str = "") -> float | None:
        with jsonl.open("a") as f:
            f.write(lines)
        obs = asyncio.run(c.collect(t))
        assert "cgroup:llm:procs" not in obs.unavailable
        assert obs.tenants["etl"].restarted_s is None
        return obs.tenants["llm"].restarted_s

    assert tick(100.0, '{"latency_s": 0.1}\n') is None
    assert tick(102.0, '{"latency_s": 0.1}\n') is None
    (llm / "cgroup.procs").write_text("201\n")  # restarted: loading its model
    assert tick(104.0) is None
    assert tick(106.0, '{"latency_s": 2.5}\n') == 4.0  # serving again, 4 s after last seen
    assert tick(108.0, '{"latency_s": 0.1}\n') is None
    (llm / "cgroup.procs").write_text("20x\n")
    obs = asyncio.run(c.collect(110.0))
    assert "line 1: not a process id" in obs.unavailable["cgroup:llm:procs"]
    assert obs.tenants["llm"].restarted_s is None


@pytest.mark.parametrize("stat", ["4242 (x) S garbage\n", None], ids=["garbled", "unreadable"])
def test_a_bad_proc_stat_is_that_tenants_reason_not_every_tenants_reading(tmp_path: Path, stat: str | None) -> None:
    """Found by hunting: a /proc/PID/stat that did not parse (or could not be read: a directory
    here, EACCES under hidepid=1) raised out of the cgroup sampler, and every tenant's I/O and
    pressure was Unavailable for the tick."""
    cg, proc = tmp_path / "cg", tmp_path / "proc"
    cg.mkdir()
    etl = _v2_tree(cg)
    (etl / "cgroup.procs").write_text("4242\n")
    (proc / "4242").mkdir(parents=True)
    if stat is None:
        (proc / "4242" / "stat").mkdir()
    else:
        (proc / "4242" / "stat").write_text(stat)
    s = CgroupSampler({"etl": "system.slice/etl.service"}, str(cg), procs_of=["etl"], proc_root=str(proc))
    r = s.read(1.0)
    assert r.tenants["etl"].io_pressure == 0.125 and r.tenants["etl"].processes is None
    assert r.unavailable["cgroup:etl:procs"].startswith(str(proc / "4242" / "stat"))
    if stat is not None:  # readable again: read again, nothing remembered of the bad one
        _proc(proc, 4242, 77)
        assert s.read(2.0).tenants["etl"].processes == frozenset({(4242, 77)})
