"""`tailguard doctor`: every probe through the daemon's own code paths, all-OK and real failures.

All-OK: the fake pynvml fed by a real 8 x H100 `nvidia-smi -q` capture, the emulated nvidia-smi on
PATH (MIG on, the real p5.48xlarge `topo -m` capture), a cgroup v2 tree, a JSON-lines latency
file, a loopback dcgm-exporter serving NVIDIA's example scrape. Failures for real: this machine's
missing NVIDIA driver (the real pynvml), a cgroup that does not exist (and one removed from the
real v1 blkio hierarchy), a broker port nobody listens on, a state dir on a read-only mount.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from fakes.daemon_fakes import Mosquitto, free_port
from fakes.fixture_paths import FIXTURES
from fakes.sig_fake_pynvml import FakeNvml
from fakes.sig_http import serve
from test_sig_cgroup import _v2_tree

from actuators.emulation.statefile import locked
from actuators.emulation.testing import blkio_sandbox, emu_host
from controller.cli import main as cli
from controller.config import parse_config
from controller.doctor import FAIL, OK, WARN, Check, DoctorOptions, exit_code, in_a_vm, run_checks

H100_Q = (FIXTURES / "nvidia-smi-q_h100-80gb-hbm3-x8-hgx_r565.txt").read_text()
P5_TOPO = (FIXTURES / "nvidia-smi-topo-m_aws-p5.48xlarge_8x-h100_tabs-expanded.txt").read_text()
DCGM = (FIXTURES / "dcgm-exporter_metrics_a100-sxm4-40gb_mig-1g.5gb_nvidia-docs.prom").read_text()


def _host(tmp: Path, monkeypatch: pytest.MonkeyPatch, mig: bool = True) -> FakeNvml:
    h = emu_host(tmp / "emu", ["H100-80GB-HBM3"] * 8)
    with locked(h.nvsmi_state) as st:
        st["topo"] = P5_TOPO
        for g in st["gpus"]:
            g["driver"], g["mig"] = "565.57.01", mig
    monkeypatch.setenv("PATH", f"{h.nvsmi.parent}:/usr/bin:/bin")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    fake = FakeNvml.from_q(H100_Q)
    for g in fake.gpus:
        g.mig_enabled = mig
    return fake


def _llm_with(latency: str) -> str:
    """A config of one sensitive tenant, llm (SLO 100 ms), whose latency source is `latency` (the
    inline table's keys)."""
    return f'[[tenants]]\nname = "llm"\nrole = "sensitive"\nslo_ms = 100\nlatency = {{ {latency} }}\n'


def _config(tmp: Path, dcgm_url: str, **over: str) -> str:
    cg = tmp / "cg"
    if not cg.exists():  # once per test: a cgroup v2 tree with the io controller, two tenant groups
        cg.mkdir()
        etl = _v2_tree(cg)
        (etl / "io.max").write_text("")
        llm = cg / "system.slice" / "llm.service"
        llm.mkdir(parents=True)
        for f in ("io.stat", "io.pressure", "cpu.pressure"):
            (llm / f).write_text((etl / f).read_text())
        (llm / "cgroup.procs").write_text(f"{os.getpid()}\n")  # the kernel lists a group's processes
        (tmp / "llm.jsonl").write_text('{"latency_s": 0.01}\n')
        (tmp / "state").mkdir()
        _proc(tmp / "proc", BARE_METAL_FLAGS)
        (tmp / "sys").mkdir()  # no DMI tables: the test machine's own would say what it is
    v = {"state_dir": str(tmp / "state"), "cg": str(cg), "etl_cgroup": "system.slice/etl.service", "mqtt": "",
         "dcgm": dcgm_url, "proc": str(tmp / "proc"), "sys": str(tmp / "sys"), "relaunch": "30"} | over  # fmt: skip
    return f"""
[host]
state_dir = "{v["state_dir"]}"
cgroup_root = "{v["cg"]}"
[[tenants]]
name = "llm"
role = "sensitive"
cgroup = "system.slice/llm.service"
slo_ms = 200
relaunch_s = {v["relaunch"]}
latency = {{ kind = "jsonl", path = "{tmp / "llm.jsonl"}" }}
[[tenants]]
name = "etl"
role = "bulk"
cgroup = "{v["etl_cgroup"]}"
[signals]
dcgm = "exporter"
dcgm_exporter_url = "{v["dcgm"]}"
proc_root = "{v["proc"]}"
sys_root = "{v["sys"]}"
{v["mqtt"]}
"""


# /proc/cpuinfo's flags line of an x86 host, and of a VM on it (the CPUID hypervisor bit)
BARE_METAL_FLAGS = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 avx2\n"
VM_FLAGS = BARE_METAL_FLAGS.replace(" avx2", " hypervisor avx2")


def _proc(root: Path, flags: str) -> None:
    """A /proc with cpuinfo and this process's stat (its cgroup lists it)."""
    root.mkdir(exist_ok=True)
    (root / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\n{flags}\n")
    me = root / str(os.getpid())
    me.mkdir(exist_ok=True)
    (me / "stat").write_text(Path(f"/proc/{os.getpid()}/stat").read_text())


def _run(text: str, fake: object | None) -> list[Check]:
    return asyncio.run(run_checks(parse_config(text), DoctorOptions(timeout_s=5.0, nvml=fake)))


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_vm_whose_tree_shows_no_switch_is_told_to_give_the_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """p5.48xlarge is a VM: its topo -m shows NODE and SYS between GPUs, no switch (the capture).
    The host's tree from a file silences it; bare metal never has it (the test below)."""
    fake = _host(tmp_path, monkeypatch)
    with serve() as pages:
        url = pages.set("/metrics", DCGM)
        _config(tmp_path, url)
        _proc(tmp_path / "vm", VM_FLAGS)
        c = _by_name(_run(_config(tmp_path, url, proc=str(tmp_path / "vm")), fake))
        assert c["topology view"].status == WARN
        assert "a VM whose PCIe tree shows no switch" in c["topology view"].cause
        assert 'source = "topo-matrix" and topo_matrix_file' in c["topology view"].fix
        host = tmp_path / "host-topo.txt"
        host.write_text(P5_TOPO)
        vm = _config(tmp_path, url, proc=str(tmp_path / "vm"))
        # the file alone is read only where sysfs shows no GPU ("auto"): it still warns
        unused = _by_name(_run(vm + f'[topology]\ntopo_matrix_file = "{host}"\n', fake))
        assert unused["topology view"].status == WARN
        used = vm + f'[topology]\nsource = "topo-matrix"\ntopo_matrix_file = "{host}"\n'
        assert "topology view" not in _by_name(_run(used, fake))


def test_all_ok_on_an_emulated_gpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _host(tmp_path, monkeypatch)
    with serve() as pages:
        checks = _run(_config(tmp_path, pages.set("/metrics", DCGM)), fake)
    bad = [c.line() for c in checks if c.status != OK]
    assert bad == [] and exit_code(checks) == 0
    c = _by_name(checks)
    assert c["nvml"].cause == "NVML initialised, 8 GPU(s)"
    assert "PCIe byte and replay counters readable" in c["nvml gpu0"].cause
    assert "H100-80GB-HBM3, driver 565.57.01: MIG on, 7 profiles listed" in c["mig gpu7"].cause
    assert c["nvidia-smi topo -m"].cause == "8 GPU(s) placed on the PCIe/NUMA tree"
    assert c["cgroup"].cause.endswith("io controller available")
    assert c["cgroup llm"].cause.endswith("its processes listed (1: a restart replaces them all)")
    assert "processes" not in c["cgroup etl"].cause  # not sensitive: its restarts are not watched
    assert "I/O counters and PSI readable" in c["cgroup etl"].cause
    assert c["latency llm"].status == OK and c["dcgm"].status == OK
    assert c["state dir"].cause.startswith(f"{tmp_path / 'state'} writable")
    assert "runs with it" not in c["state dir"].cause
    from controller.statelock import lock_state_dir

    held = lock_state_dir(str(tmp_path / "state"))  # a daemon runs with that directory
    assert held is not None
    with serve() as pages:
        checks = _run(_config(tmp_path, pages.set("/metrics", DCGM)), fake)
    assert _by_name(checks)["state dir"].cause.endswith(f"; a daemon (pid {os.getpid()}) runs with it")
    held.close()


def test_mig_mode_off_is_a_warning_with_the_command_to_fix_it(tmp_path, monkeypatch) -> None:
    fake = _host(tmp_path, monkeypatch, mig=False)
    with serve() as pages:
        checks = _run(_config(tmp_path, pages.set("/metrics", DCGM)), fake)
    c = _by_name(checks)["mig gpu3"]
    assert c.status == WARN and "MIG mode is off on GPU 3" in c.cause and "nvidia-smi -i 3 -mig 1" in c.fix
    assert exit_code(checks) == 1


def test_this_gpu_less_machine_fails_on_the_missing_driver(tmp_path, monkeypatch, capsys) -> None:
    # The real pynvml and no nvidia-smi on PATH: what an operator sees on a host without the driver.
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cfg = tmp_path / "tg.toml"
    cfg.write_text(_config(tmp_path, "http://127.0.0.1:9/metrics"))
    rc = cli(["doctor", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 2
    assert "FAIL nvml                   NVIDIA driver / NVML missing or unusable: NVML init failed" in out
    assert "FAIL mig                    nvidia-smi unavailable" in out
    assert out.rstrip().endswith("failures (see FAIL lines)")
    assert cli(["doctor", "--config", str(cfg), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    config, first = data["checks"][:2]
    assert (config["name"], config["status"]) == ("config", "OK")
    assert data["exit"] == 2 and (first["name"], first["status"]) == ("nvml", "FAIL")
    assert "install the NVIDIA driver" in first["fix"]


def test_the_command_line_without_a_driver_exits_non_zero() -> None:
    # The installed entry point, as an operator runs it here (no GPU, no driver).
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    p = subprocess.run([str(Path(sys.executable).parent / "tailguard"), "doctor", "--timeout", "3"],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert p.returncode == 2 and "NVIDIA driver / NVML missing" in p.stdout and "Traceback" not in p.stderr


def test_a_missing_cgroup_and_a_group_without_io_max_fail(tmp_path) -> None:
    from controller.doctor import check_cgroups

    text = _config(tmp_path, "http://127.0.0.1:9/metrics", etl_cgroup="system.slice/gone.service")
    c = _by_name(asyncio.run(check_cgroups(parse_config(text))))
    assert c["cgroup etl"].status == FAIL and "does not exist" in c["cgroup etl"].cause
    assert "tenants[1].cgroup" in c["cgroup etl"].fix
    assert c["cgroup llm"].status == OK
    (tmp_path / "cg" / "system.slice" / "etl.service" / "io.max").unlink()  # io not enabled for its parent
    c = _by_name(asyncio.run(check_cgroups(parse_config(_config(tmp_path, "http://127.0.0.1:9/metrics")))))
    assert c["cgroup etl"].status == FAIL and "io.max missing" in c["cgroup etl"].cause
    assert "cgroup.subtree_control" in c["cgroup etl"].fix


def test_a_cgroup_controllers_that_is_no_regular_file_fails_and_does_not_hang(tmp_path) -> None:
    from controller.doctor import check_cgroups

    text = _config(tmp_path, "http://127.0.0.1:9/metrics")
    ctl = tmp_path / "cg" / "cgroup.controllers"
    ctl.unlink()
    os.mkfifo(ctl)  # read_text() blocked in open() for ever: run it where a hang fails the test
    c = _by_name(_answered(lambda: check_cgroups(parse_config(text)), "check_cgroups on a FIFO"))
    assert c["cgroup"].status == FAIL and f"cannot read {ctl}" in c["cgroup"].cause


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe", "not UTF-8 text (byte 0xff at offset 8)"),
        (b"cpuset cpu \xc0io memory\n", "not UTF-8 text (byte 0xc0 at offset 11)"),
        (b"\x00\x01\x02 io\n", "'\\x00\\x01\\x02' is no controller name"),
        (b"cpu IO memory\n", "'IO' is no controller name"),
        (b"<html><body>404 Not Found</body></html>\n", "'<html><body>404' is no controller name"),
        (
            b"io," + b"x" * 5000 + b"\n",
            "'io," + "x" * 16 + "..." + "x" * 11 + "' (5005 characters) is no controller name",
        ),
    ],
    ids=["binary", "not-utf-8", "control-characters", "upper-case", "words", "5000-characters"],
)
def test_a_cgroup_controllers_full_of_garbage_fails_naming_the_file_and_what_is_wrong(
    tmp_path, content: bytes, says: str
) -> None:
    """Was: read as a list without io ("cgroup v2 at ... without the io controller"), the file
    unnamed and its content unsaid, as if the kernel had left io out."""
    from controller.doctor import check_cgroups

    text = _config(tmp_path, "http://127.0.0.1:9/metrics")
    ctl = tmp_path / "cg" / "cgroup.controllers"
    ctl.write_bytes(content)
    c = _by_name(asyncio.run(check_cgroups(parse_config(text))))["cgroup"]
    assert c.status == FAIL and c.cause == f"{ctl}: {says}: not a space-separated list of controller names", c
    assert "host.cgroup_root" in c.fix
    for fine, status in ((b"cpuset cpu io memory hugetlb pids rdma misc\n", OK), (b"cpu memory\n", FAIL), (b"", FAIL)):
        ctl.write_bytes(fine)
        c = _by_name(asyncio.run(check_cgroups(parse_config(text))))["cgroup"]
        assert c.status == status and c.cause.startswith("cgroup v2 at "), (fine, c)


@pytest.mark.root
def test_a_group_removed_from_the_real_blkio_hierarchy(tmp_path, monkeypatch) -> None:
    if os.geteuid() != 0 or not Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device").exists():
        pytest.skip("needs root and the real cgroup v1 blkio hierarchy")
    with blkio_sandbox("tailguard-doctor") as (name, _path):
        text = _config(tmp_path, "http://127.0.0.1:9/metrics", cg="/sys/fs/cgroup", etl_cgroup=name)
        cfg = parse_config(text.replace('cgroup = "system.slice/llm.service"\n', ""))
        from controller.doctor import check_cgroups

        c = _by_name(asyncio.run(check_cgroups(cfg)))
        assert c["cgroup"].cause.startswith("cgroup v1 blkio at /sys/fs/cgroup/blkio")
        # On this hybrid host the v1 group has no cgroup2 twin, so its PSI files are missing: a warning.
        assert c["cgroup etl"].status != FAIL and "pressure" in c["cgroup etl"].cause
    c = _by_name(asyncio.run(check_cgroups(cfg)))  # the sandbox is gone now
    assert c["cgroup etl"].status == FAIL and "does not exist" in c["cgroup etl"].cause


def test_a_broker_that_refuses_fails_and_one_that_accepts_is_ok(tmp_path) -> None:
    from controller.doctor import check_mqtt

    def mqtt(url: str) -> Check:
        text = _config(tmp_path, "http://127.0.0.1:9/metrics", mqtt=f'[exporters.mqtt]\nenabled = true\nurl = "{url}"')
        (c,) = asyncio.run(check_mqtt(parse_config(text), 3.0))
        return c

    port = free_port()  # nobody listens: the connection is refused
    c = mqtt(f"mqtt://127.0.0.1:{port}")
    assert c.status == FAIL and f"127.0.0.1:{port}" in c.cause and "start the broker" in c.fix
    broker = Mosquitto(tmp_path).start()
    try:
        c = mqtt(broker.url)
    finally:
        broker.stop()
    assert c.status == OK and "accepted a connection" in c.cause


def test_state_dir_missing_or_not_a_directory(tmp_path) -> None:
    from controller.doctor import check_state_dir

    def state(path: Path) -> Check:
        (c,) = asyncio.run(check_state_dir(parse_config(_config(tmp_path, "http://x:9/m", state_dir=str(path)))))
        return c

    (tmp_path / "file").write_text("")
    c = state(tmp_path / "new" / "state")
    assert c.status == WARN and "does not exist" in c.cause and "install -d" in c.fix
    c = state(tmp_path / "file")
    assert c.status == FAIL and "is not a directory" in c.cause


def test_measured_relaunches_against_the_configured_one(tmp_path) -> None:
    """The daemon's status file holds each tenant's last measured outages: a restart move's
    relaunch well over relaunch_s (the first move is priced on it) or well under it warns, near it
    is OK; warm switch-overs and resizes are not compared; no status file, nothing to say."""
    from controller.doctor import check_outages

    cfg = parse_config(_config(tmp_path, "http://x:9/m", relaunch="60"))
    assert asyncio.run(check_outages(cfg)) == []  # no daemon has run here

    def said(*moves: tuple[str, float]) -> list[Check]:
        recs = [{"kind": k, "seconds": s, "wall": 1.0} for k, s in moves]
        status = {"schema": "tailguard.status/1", "wall": 1.0, "outages": {"llm": recs}}
        (tmp_path / "state" / "status.json").write_text(json.dumps(status))
        return asyncio.run(check_outages(cfg))

    (c,) = said(("move", 118.0), ("move", 131.0), ("resize", 20.0), ("move", 125.0))
    assert c.status == WARN and "measured relaunch 125 s (median of 3 moves), relaunch_s 60 s" in c.cause
    assert c.fix.startswith("set relaunch_s = 125 for llm") and "2.1x" in c.fix
    (c,) = said(("move", 30.0))
    assert c.status == WARN and "too dear" in c.fix
    (c,) = said(("move", 70.0), ("warm_move", 0.0))
    assert c.status == OK
    assert said(("resize", 300.0)) == []  # a resize's seconds include its MIG change
    status = {"schema": "tailguard.status/1", "wall": 1.0,
              "outages": {"llm": [{"kind": "resize", "seconds": 300.0, "wall": 1.0, "relaunch_s": 130.0}]}}  # fmt: skip
    (tmp_path / "state" / "status.json").write_text(json.dumps(status))
    (c,) = asyncio.run(check_outages(cfg))
    assert c.status == WARN and "measured relaunch 130 s (median of 1 moves)" in c.cause  # its relaunch alone


def test_a_restart_of_its_own_longer_than_relaunch_s_warns_before_any_move(tmp_path) -> None:
    """No move measured yet: the shortest of the tenant's own restarts (the status file's tenant
    view, own_restart_s) well over relaunch_s warns; near it, or a move measured, says nothing of it."""
    from controller.doctor import check_outages

    cfg = parse_config(_config(tmp_path, "http://x:9/m", relaunch="5"))

    def said(own: float | None, moves: list[dict[str, float | str]] | None = None) -> list[Check]:
        status = {"schema": "tailguard.status/1", "wall": 1.0, "tenants": {"llm": {"own_restart_s": own}}}
        if moves is not None:
            status["outages"] = {"llm": moves}
        (tmp_path / "state" / "status.json").write_text(json.dumps(status))
        return asyncio.run(check_outages(cfg))

    (c,) = said(62.0)
    assert c.status == WARN and c.cause == "llm: restarted on its own in 62 s (its shortest), relaunch_s 5 s"
    assert c.fix.startswith("set relaunch_s = 62 for llm")
    assert said(6.0) == [] and said(None) == []
    (c,) = said(62.0, [{"kind": "move", "seconds": 58.0, "wall": 1.0}])
    assert "measured relaunch 58 s" in c.cause  # a measured move says more than a restart


def test_measured_relaunches_against_the_readiness_wait(tmp_path) -> None:
    """A restart launcher gives a start readiness_timeout_s; a measured relaunch more than half of
    it warns (a slower start fails the move, and the move back is a second outage)."""
    from controller.doctor import check_outages

    text = _config(tmp_path, "http://x:9/m", relaunch="60").replace(
        "slo_ms = 200\n",
        'slo_ms = 200\ninstance = "gpu0/2g.10gb@0"\n'
        'launcher = { kind = "command", command = ["/bin/true", "{uuid}"], readiness_timeout_s = 120 }\n',
        1,
    )
    cfg = parse_config('[[gpus]]\nname = "gpu0"\nindex = 0\n' + text)

    def said(*moves: float) -> list[Check]:
        recs = [{"kind": "move", "seconds": s, "wall": 1.0} for s in moves]
        status = {"schema": "tailguard.status/1", "wall": 1.0, "outages": {"llm": recs}}
        (tmp_path / "state" / "status.json").write_text(json.dumps(status))
        return [c for c in asyncio.run(check_outages(cfg)) if "readiness" in c.cause]

    (c,) = said(55.0, 58.0)
    assert c.status == OK and "measured relaunch up to 58 s, launcher.readiness_timeout_s 120 s" in c.cause
    (c,) = said(55.0, 58.0, 71.2)
    assert c.status == WARN and "up to 71.2 s" in c.cause
    assert c.fix.startswith("raise launcher.readiness_timeout_s for llm to 143 or more")


@pytest.mark.faults
def test_state_dir_on_a_read_only_mount_fails(tmp_path, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {p.stderr.strip()}")
    try:
        fake = _host(tmp_path, monkeypatch)
        with serve() as pages:
            checks = _run(_config(tmp_path, pages.set("/metrics", DCGM), state_dir=str(ro)), fake)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    c = _by_name(checks)["state dir"]
    assert c.status == FAIL and "not writable: Read-only file system" in c.cause
    assert exit_code(checks) == 2
    assert os.listdir(ro) == []  # nothing left behind


def test_a_hanging_nvidia_smi_is_bounded(tmp_path, monkeypatch) -> None:
    fake = _host(tmp_path, monkeypatch)
    emu_state = tmp_path / "emu" / "nvsmi.json"
    with locked(emu_state) as st:
        st["faults"] = [{"match": "topo", "mode": "hang", "seconds": 60, "times": -1}]
    cfg = parse_config(_config(tmp_path, "http://127.0.0.1:9/metrics"))
    checks = asyncio.run(run_checks(cfg, DoctorOptions(timeout_s=1.0, nvml=fake)))
    c = _by_name(checks)["nvidia-smi topo -m"]
    assert c.status == FAIL and "timed out" in c.cause


def test_notify_socket_and_latency_endpoint(tmp_path, monkeypatch) -> None:
    from controller.doctor import check_latency, check_notify_socket

    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nope"))
    (c,) = asyncio.run(check_notify_socket())
    assert c.status == FAIL and "No such file" in c.cause

    def tenant(url: str) -> str:
        return _llm_with(f'kind = "prometheus", url = "{url}"')

    (c,) = asyncio.run(check_latency(parse_config(tenant(f"http://127.0.0.1:{free_port()}/metrics"))))
    assert c.status == FAIL and "fix tenants[0].latency" in c.fix
    vllm = (FIXTURES / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom").read_text()
    with serve() as pages:
        url = pages.set("/metrics", vllm + "process_start_time_seconds 1.7e9\n")
        (c,) = asyncio.run(check_latency(parse_config(tenant(url))))
        assert c.status == OK and c.cause == f"prometheus {url}: readable"
        # the docs' excerpt has no process metrics (a multiprocess server exports none): said, not failed
        pages.set("/metrics", vllm)
        (c,) = asyncio.run(check_latency(parse_config(tenant(url))))
    assert c.status == OK and c.cause.startswith(f"prometheus {url}: readable; no process_start_time_seconds")


def test_an_slo_inside_a_histogram_bucket_warns_naming_the_bucket() -> None:
    """vLLM's TTFT buckets (v1's, fsm.histogram.VLLM_TTFT_BUCKETS: ... 0.1, 0.25, 0.5 ...): a
    200 ms SLO falls inside the 100-250 ms bucket, where the share over it is estimated, not counted:
    WARN, naming the bucket and the two bounds that would count it exactly. On a bound (250 ms), or
    with no SLO (a bulk tenant's latency), nothing to say."""
    from controller.doctor import check_latency
    from fsm.histogram import VLLM_TTFT_BUCKETS

    metric = "vllm:time_to_first_token_seconds"
    page = (
        "".join(f'{metric}_bucket{{le="{le}"}} {10 * k}\n' for k, le in enumerate((*VLLM_TTFT_BUCKETS, "+Inf"), 1))
        + f"{metric}_count {10 * (len(VLLM_TTFT_BUCKETS) + 1)}\n"
    )

    def tenant(url: str, slo: str, role: str = "sensitive") -> str:
        return f"""
[[tenants]]
name = "llm"
role = "{role}"
{slo}
latency = {{ kind = "prometheus", url = "{url}" }}
"""

    with serve() as pages:
        url = pages.set("/metrics", page)
        (inside,) = asyncio.run(check_latency(parse_config(tenant(url, "slo_ms = 200"))))
        (bound,) = asyncio.run(check_latency(parse_config(tenant(url, "slo_ms = 250"))))
        (bulk,) = asyncio.run(check_latency(parse_config(tenant(url, "", role="bulk"))))
    assert inside.status == WARN, inside
    assert "SLO 200 ms falls inside the 100-250 ms bucket of vllm:time_to_first_token_seconds" in inside.cause
    assert "(100 or 250 ms)" in inside.fix and "jsonl or mqtt" in inside.fix
    assert bound.status == OK and bulk.status == OK


def test_slo_bucket_finds_the_bucket_a_threshold_falls_inside() -> None:
    from fsm.histogram import VLLM_TTFT_BUCKETS, slo_bucket

    assert slo_bucket(0.2, VLLM_TTFT_BUCKETS) == (0.1, 0.25)
    assert slo_bucket(0.25, VLLM_TTFT_BUCKETS) is None  # on a bound: counted exactly
    assert slo_bucket(0.0005, VLLM_TTFT_BUCKETS) == (0.0, 0.001)  # the lowest bucket starts at 0
    assert slo_bucket(3000.0, (*VLLM_TTFT_BUCKETS, math.inf)) is None  # above the last finite bound
    assert slo_bucket(0.2, ()) is None


def test_a_notify_socket_of_thousands_of_characters_is_shown_shortened(tmp_path, monkeypatch) -> None:
    """Was: doctor printed NOTIFY_SOCKET whole, 5,000 characters on one line for one check."""
    from controller.doctor import check_notify_socket

    (tmp_path / "file").write_text("")
    long_file = str(tmp_path) + "/." * ((4000 - len(str(tmp_path))) // 2) + "/file"  # within PATH_MAX
    cases = [
        ("/nowhere/" + "x" * 4991, FAIL, "File name too long"),
        ("@" + "x" * 4999, OK, "abstract socket"),
        (long_file, FAIL, "is not a socket"),
    ]
    for value, status, says in cases:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
        (c,) = asyncio.run(check_notify_socket())
        assert c.status == status and says in c.cause, c
        assert value[:100] in c.cause and f"...{value[-12:]} ({len(value)} characters)" in c.cause
        assert len(c.line()) < 300, len(c.line())


@pytest.mark.faults
def test_an_nvml_init_that_hangs_is_bounded(tmp_path, monkeypatch) -> None:
    import time

    from controller.doctor import run_sync

    fake = _host(tmp_path, monkeypatch)

    def hang() -> None:  # a wedged driver: nvmlInit never returns (here: for 8 s)
        time.sleep(8)

    fake.nvmlInit = hang  # type: ignore[method-assign]
    cfg = parse_config(_config(tmp_path, "http://127.0.0.1:9/metrics"))
    t0 = time.monotonic()
    checks, stuck = run_sync(cfg, DoctorOptions(timeout_s=1.0, nvml=fake))
    assert time.monotonic() - t0 < 7.0 and stuck
    c = _by_name(checks)["nvml"]
    assert c.status == FAIL and "no answer within" in c.cause
    fast = _host(tmp_path / "fast", monkeypatch)
    for _ in range(3):  # idle worker threads are not taken for stuck ones (the CLI would exit hard)
        assert run_sync(cfg, DoctorOptions(timeout_s=2.0, nvml=fast))[1] is False


def test_a_lock_file_that_is_no_regular_file_warns_and_does_not_hang(tmp_path) -> None:
    # holder() opened the lock blocking: a FIFO there hung doctor on its event loop, past every timeout
    from controller.doctor import check_state_dir
    from controller.statelock import LOCK_NAME

    text = _config(tmp_path, "http://127.0.0.1:9/metrics")
    lock = tmp_path / "state" / LOCK_NAME

    def state() -> Check:
        (c,) = _answered(lambda: check_state_dir(parse_config(text)), "check_state_dir on the lock file")
        return c

    os.mkfifo(lock)
    c = state()
    assert c.status == WARN and c.cause == f"lock file {lock} is a FIFO, not a regular file" and "remove it" in c.fix
    lock.unlink()
    lock.mkdir()  # the daemon's open() of it fails: it would run without its lock
    assert state().cause == f"lock file {lock} is a directory, not a regular file"
    lock.rmdir()
    lock.symlink_to(lock)
    c = state()
    assert c.status == WARN and c.cause == f"lock file {lock}: Too many levels of symbolic links"
    lock.unlink()
    lock.write_text("")
    assert state().status == OK


def test_a_group_linked_out_of_the_cgroup_root_fails_naming_the_tenant(tmp_path) -> None:
    # a ValueError from confine() left the probe: one "report this as a tailguard bug" line for all groups
    from controller.doctor import check_cgroups

    text = _config(tmp_path, "http://127.0.0.1:9/metrics", etl_cgroup="system.slice/out.service")
    (tmp_path / "cg" / "system.slice" / "out.service").symlink_to(tmp_path)
    c = _by_name(asyncio.run(check_cgroups(parse_config(text))))
    assert c["cgroup llm"].status == OK
    assert c["cgroup etl"].status == FAIL and "outside the cgroup root" in c["cgroup etl"].cause
    assert "tenants[1].cgroup" in c["cgroup etl"].fix


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("dir", "io.max: not a regular file"),
        ("fifo", "io.max: not a regular file"),
        ("loop", "io.max: cannot read: Too many levels of symbolic links"),
        ("garbage", "io.max: line 1: expected 'MAJ:MIN key=value ...', got 'garbage'"),
        ("twice", "io.max: line 2: device 8:16 twice"),
        ("huge", "io.max: larger than 1024 KiB"),
    ],
)
def test_io_limits_the_actuator_cannot_read_fail_naming_the_file(tmp_path, kind: str, said: str) -> None:
    # Only io.max's existence was checked: OK here, and then every cap the daemon set failed.
    from controller.doctor import check_cgroups

    text = _config(tmp_path, "http://127.0.0.1:9/metrics")
    io_max = tmp_path / "cg" / "system.slice" / "etl.service" / "io.max"
    io_max.unlink()
    {
        "dir": io_max.mkdir,
        "fifo": lambda: os.mkfifo(io_max),
        "loop": lambda: io_max.symlink_to(io_max),
        "garbage": lambda: io_max.write_text("garbage\n"),
        "twice": lambda: io_max.write_text("8:16 rbps=1 wbps=max\n8:16 wbps=2\n"),
        "huge": lambda: io_max.write_text("\n" * (2 << 20)),
    }[kind]()
    c = _by_name(_answered(lambda: check_cgroups(parse_config(text)), "check_cgroups on io.max"))
    assert c["cgroup llm"].status == OK  # a sensitive tenant is never capped: its io.max is not read
    assert c["cgroup etl"].status == FAIL and said in c["cgroup etl"].cause and str(io_max) in c["cgroup etl"].cause


def test_v1_throttle_files_the_actuator_cannot_read_fail_naming_the_file(tmp_path) -> None:
    from controller.doctor import check_cgroups

    root = tmp_path / "v1"
    blkio = root / "blkio"
    g = blkio / "etl"
    g.mkdir(parents=True)
    (blkio / "blkio.throttle.write_bps_device").write_text("")
    svc = "8:16 Read 1\n8:16 Write 2\n8:16 Sync 0\n8:16 Async 3\n8:16 Discard 0\n8:16 Total 3\nTotal 3\n"
    for f in ("io_service_bytes", "io_serviced"):
        (g / f"blkio.throttle.{f}").write_text(svc)
    (g / "blkio.throttle.read_bps_device").write_text("8:16 1048576\n")
    (g / "blkio.throttle.write_bps_device").write_text("8:16 lots\n")
    text = f'[host]\ncgroup_root = "{root}"\n[[tenants]]\nname = "etl"\nrole = "bulk"\ncgroup = "etl"\n'
    (c,) = (c for c in asyncio.run(check_cgroups(parse_config(text))) if c.name == "cgroup etl")
    assert c.status == FAIL and f"{g}/blkio.throttle.write_bps_device: line 1" in c.cause and "lots" in c.cause
    (g / "blkio.throttle.write_bps_device").write_text("8:16 2097152\n")
    (c,) = (c for c in asyncio.run(check_cgroups(parse_config(text))) if c.name == "cgroup etl")
    assert c.status != FAIL, c.line()  # the PSI files of a hybrid host's unified tree are missing here: a warning


def test_an_mqtt_ca_file_that_cannot_be_loaded_fails_naming_it_and_does_not_hang(tmp_path) -> None:
    # The TLS layer read it blocking, on the probe's loop: a FIFO hung doctor past every timeout,
    # and one it could not load read as "start the broker or fix exporters.mqtt.url / credentials".
    import ssl

    from controller.doctor import check_mqtt

    ca = tmp_path / "ca.pem"

    def mqtt() -> Check:
        url = f"mqtts://127.0.0.1:{free_port()}"  # nobody listens
        text = f'[exporters.mqtt]\nenabled = true\nurl = "{url}"\ntls = true\ntls_ca = "{ca}"\n'
        (c,) = _answered(lambda: check_mqtt(parse_config(text), 3.0), "check_mqtt on the CA file")
        return c

    os.mkfifo(ca)
    c = mqtt()
    assert c.status == FAIL and c.cause == f"tls_ca {ca}: a FIFO, not a regular file"
    assert c.fix == "fix exporters.mqtt.tls_ca"
    ca.unlink()
    ca.mkdir()
    assert mqtt().cause == f"tls_ca {ca}: a directory, not a regular file"
    ca.rmdir()
    ca.write_bytes(b"\x00garbage\xff")
    assert mqtt().cause.startswith(f"tls_ca {ca}: not PEM CA certificates")
    bundle = ssl.get_default_verify_paths().cafile
    if bundle and Path(bundle).is_file():  # a CA file that loads: on to the broker, which refuses
        ca.unlink()
        ca.symlink_to(bundle)
        c = mqtt()
        assert c.status == FAIL and c.cause.startswith("broker mqtts://127.0.0.1:"), c.line()


def _answered(check: Callable[[], Coroutine[Any, Any, list[Check]]], what: str) -> list[Check]:
    """The check's lines, run on its own loop in a thread that must answer within 20 s: the faults
    these tests plant (a FIFO) hung the check's loop past every timeout of its own."""
    got: list[list[Check]] = []
    th = threading.Thread(target=lambda: got.append(asyncio.run(check())), daemon=True)
    th.start()
    th.join(20)
    assert got, f"{what}: no answer in 20 s (hung)"
    return got[0]


@pytest.mark.parametrize(
    ("flags", "vendor", "product", "xen", "vm"),
    [
        (BARE_METAL_FLAGS, "", "", "", False),
        (VM_FLAGS, "", "", "", True),
        ("", "", "", "", False),  # arm64: no flags line, no DMI
        ("", "Amazon EC2", "g5g.16xlarge", "", True),
        ("", "Amazon EC2", "c7g.metal", "", False),
        ("", "QEMU", "Standard PC (Q35 + ICH9, 2009)", "", True),
        ("", "Microsoft Corporation", "Virtual Machine", "", True),
        ("", "Microsoft Corporation", "Surface Pro", "", False),
        ("", "Supermicro", "ARS-111GL-NHR", "", False),
        ("", "", "", "xen", True),
    ],
    ids=["x86-metal", "x86-vm", "arm64-nothing", "ec2-graviton-vm", "ec2-metal", "qemu", "azure", "ms-laptop",
         "gh200-metal", "xen"],
)  # fmt: skip
def test_a_vm_is_told_on_arm64_too(tmp_path: Path, flags: str, vendor: str, product: str, xen: str, vm: bool) -> None:
    """x86's hypervisor flag, else a Xen guest's /sys/hypervisor or the DMI tables a hypervisor
    fills (arm64 has no flags line: a GH200 VM got no warning)."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(f"processor\t: 0\n{flags}\n")
    for rel, text in (("class/dmi/id/sys_vendor", vendor), ("class/dmi/id/product_name", product),
                      ("hypervisor/type", xen)):  # fmt: skip
        if text:
            f = tmp_path / "sys" / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text + "\n")
    assert in_a_vm(str(tmp_path / "proc"), str(tmp_path / "sys")) is vm


def test_a_jsonl_source_whose_first_line_has_no_time_says_so(tmp_path) -> None:
    from controller.doctor import check_latency

    f = tmp_path / "llm.jsonl"

    def cfg(time_field: str) -> str:
        return _llm_with(f'kind = "jsonl", path = "{f}", time_field = "{time_field}"')

    f.write_text('{"latency_s": 0.01, "t": 1700000000.5}\n')
    (c,) = asyncio.run(check_latency(parse_config(cfg("t"))))
    assert c.status == OK and c.cause == f"jsonl {f}: readable"
    (c,) = asyncio.run(check_latency(parse_config(cfg("ts"))))
    assert c.status == OK and c.cause.startswith(f"jsonl {f}: readable; its first line has no ts in Unix seconds")


def test_the_configs_own_problems_come_first(tmp_path) -> None:
    """doctor showed the environment only: a config that loads but puts a MIG home where the GPU
    allows none, or a legal setting probably not meant (check-config's warnings), went unsaid. The
    file checks stay the probes' (a cgroup that does not exist is theirs to say, with its fix)."""
    from controller.doctor import check_config

    text = _config(tmp_path, "http://x:9/m")
    (c,) = check_config(parse_config(text), "tg.toml")
    assert (c.status, c.cause) == (OK, "tg.toml: no problems, no warnings")
    slow = text.replace("[host]\n", "[host]\nsample_period_s = 0.5\n", 1)
    (c,) = check_config(parse_config(slow), "tg.toml")
    assert c.status == WARN and c.cause.startswith("2 warning(s): signals.timeout_s: 1 s leaves no room")
    assert c.cause.endswith("(and 1 more)") and c.fix == "tailguard check-config tg.toml"
    mig = text.replace("slo_ms = 200\n", 'slo_ms = 200\ngpu = "gpu0"\ninstance = "gpu0/2g.10gb@1"\n', 1)
    (c,) = check_config(parse_config('[[gpus]]\nname = "gpu0"\nindex = 0\nmodel = "A100-SXM4-40GB"\n' + mig), "tg.toml")
    assert c.status == FAIL and c.cause.startswith("1 problem(s): tenants[0](llm).instance: gpu0/2g.10gb@1")
    (c,) = check_config(parse_config(""), None)
    assert c.status == WARN and "no [[tenants]]" in c.cause and c.fix.startswith("write a config")
