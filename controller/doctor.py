"""`tailguard doctor`: a read-only check of every real path the daemon would use on this host.

Each probe goes through the code the daemon itself runs (the samplers in controller/signals, the
actuators' nvidia-smi client and cgroup code, the MQTT bridge) under a timeout, and yields one
line: OK / WARN / FAIL, the cause, and the fix. Nothing is changed on the host; the only write is
a temporary file in the state directory, removed at once, to prove it is writable.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from actuators.cgroup import CgroupError, CgroupGone, CgroupIO
from actuators.nvsmi import NvidiaSmi
from actuators.paths import PathError
from controller.config import Config, TenantConfig
from controller.config_files import read_mqtt_password
from controller.mig_tables import MigTables
from controller.signals.base import Unavailable
from fsm.mig import GpuModel
from fsm.topology import NodeKind
from schema.files import open_regular, read_small_bytes, read_small_text
from schema.jsontext import shown
from schema.problems import short_text

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MIN_FREE_BYTES = 64 << 20  # the journal (4 MiB) and state files, with room for a trace


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    cause: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4} {self.name:<22} {self.cause}{fix}"


@dataclass(slots=True)
class DoctorOptions:
    timeout_s: float = 5.0
    nvml: ModuleType | Any | None = None  # a pynvml stand-in (tests); None: the real module
    nvidia_smi: str = "nvidia-smi"
    config_path: str | None = None  # the file the config came from (None: the defaults)


def exit_code(checks: list[Check]) -> int:
    if any(c.status == FAIL for c in checks):
        return 2
    return 1 if any(c.status == WARN for c in checks) else 0


async def _bounded(name: str, coro: Awaitable[list[Check]], timeout_s: float) -> list[Check]:
    try:
        async with asyncio.timeout(timeout_s):
            return await coro
    except TimeoutError:
        return [Check(name, FAIL, f"no answer within {timeout_s:g} s", "find what hangs (a stuck driver or mount)")]
    except Exception as e:  # a probe bug is a finding, not a traceback
        return [Check(name, FAIL, f"{type(e).__name__}: {e}", "report this as a tailguard bug")]


def run_sync(cfg: Config, opts: DoctorOptions) -> tuple[list[Check], bool]:
    """run_checks on a fresh loop whose worker threads are not waited for: a driver call that
    hangs inside NVML cannot be cancelled, and asyncio.run would wait for its thread at the end.
    Returns (checks, True when such a thread is still stuck)."""
    import concurrent.futures
    import threading

    prefix = f"tailguard-doctor-{os.getpid()}-{time.monotonic_ns()}"
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=prefix)
    loop.set_default_executor(pool)
    try:
        checks = loop.run_until_complete(run_checks(cfg, opts))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        loop.close()
    # Idle workers leave at once after the shutdown; one still inside a driver call does not.
    deadline = time.monotonic() + 1.0
    mine = [t for t in threading.enumerate() if t.name.startswith(prefix)]
    for t in mine:
        t.join(max(0.0, deadline - time.monotonic()))
    return checks, any(t.is_alive() for t in mine)


async def run_checks(cfg: Config, opts: DoctorOptions) -> list[Check]:
    nvsmi = NvidiaSmi(opts.nvidia_smi, timeout=opts.timeout_s)
    probes: list[tuple[str, Callable[[], Awaitable[list[Check]]]]] = [
        ("nvml", lambda: check_nvml(cfg, opts)),
        ("mig", lambda: check_mig(cfg, nvsmi)),
        ("topology", lambda: check_topo(nvsmi, opts.timeout_s, cfg)),
        ("dcgm", lambda: check_dcgm(cfg, opts.timeout_s)),
        ("cgroup", lambda: check_cgroups(cfg)),
        ("latency", lambda: check_latency(cfg)),
        ("mqtt", lambda: check_mqtt(cfg, opts.timeout_s)),
        ("state dir", lambda: check_state_dir(cfg)),
        ("outages", lambda: check_outages(cfg)),
        ("notify socket", check_notify_socket),
    ]
    # One after the other: the output reads top-down, and no probe competes with another.
    out: list[Check] = check_config(cfg, opts.config_path)
    for name, probe in probes:
        out += await _bounded(name, probe(), opts.timeout_s * 3)
    return out


# ---------------------------------------------------------------- the config itself


def check_config(cfg: Config, path: str | None) -> list[Check]:
    """What check-config says of a config that loads, less its file checks (the probes below look
    at the files, groups and programs themselves): MIG homes against the built-in profile tables,
    and the warnings (legal settings that are probably not meant). A doctor run on a new host that
    showed only the environment hid them."""
    from controller.config_checks import mig_problems, model_problems

    problems = [p for p in model_problems(cfg) if not p.error] + mig_problems(cfg)
    if not problems:
        return [Check("config", OK, f"{path or 'the defaults'}: no problems, no warnings")]
    fix = f"tailguard check-config {path}" if path else "write a config (systemd/tailguard.toml)"
    errors = [p for p in problems if p.error]
    worst = errors or problems
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    status = FAIL if errors else WARN
    what = f"{len(errors)} problem(s)" if errors else f"{len(problems)} warning(s)"
    return [Check("config", status, f"{what}: {worst[0].key}: {worst[0].message}{more}", fix)]


# ---------------------------------------------------------------- GPU paths

NO_DRIVER_FIX = "install the NVIDIA driver (nvidia-smi must run) and nvidia-ml-py; or set signals.nvml = false"
NO_SMI_FIX = "install the NVIDIA driver with its nvidia-smi (MIG changes and the topology need it)"


async def check_nvml(cfg: Config, opts: DoctorOptions) -> list[Check]:
    from controller.signals.nvml import NvmlReading, NvmlSampler

    if not cfg.signals.nvml:
        return [
            Check(
                "nvml",
                WARN,
                "signals.nvml = false: no PCIe counters, MIG layouts or GPU health",
                "set signals.nvml = true on a GPU host",
            )
        ]
    s = NvmlSampler({g.name: g.index for g in cfg.gpus} or None, nvml=opts.nvml, timeout_s=opts.timeout_s)
    r = await s.sample(time.time())
    if isinstance(r, Unavailable):
        return [Check("nvml", FAIL, f"NVIDIA driver / NVML missing or unusable: {r.reason}", NO_DRIVER_FIX)]
    assert isinstance(r, NvmlReading)
    out = [Check("nvml", OK, f"NVML initialised, {len(r.gpus)} GPU(s)")]
    for g, v in sorted(r.gpus.items()):
        name = f"nvml {g}"
        why = {k.split(":")[-1]: reason for k, reason in r.unavailable.items() if k.startswith(f"nvml:{g}")}
        if v.lost:
            out.append(
                Check(name, FAIL, "GPU is lost (fell off the bus?)", "check dmesg for Xid errors; reset the GPU")
            )
            continue
        pcie = {k: why[k] for k in ("pcie_tx", "pcie_rx") if k in why}
        if pcie:
            out.append(
                Check(
                    name,
                    WARN,
                    f"{v.model}: PCIe counters not readable: {'; '.join(sorted(set(pcie.values())))}",
                    "under vGPU PCIe counters are not offered; DCGM's PCIe gauges are used if present",
                )
            )
        else:
            extra = f"; {', '.join(f'{k}: {x}' for k, x in sorted(why.items()))}" if why else ""
            out.append(Check(name, OK, f"{v.model} at {v.bus_id}: PCIe byte and replay counters readable{extra}"))
    return out


async def check_mig(cfg: Config, nvsmi: NvidiaSmi) -> list[Check]:
    tables = MigTables(nvsmi, {g.name: g.index for g in cfg.gpus}, {g.name: g.model for g in cfg.gpus if g.model})
    await tables.refresh(force=True)
    if tables.last_error:
        return [Check("mig", FAIL, tables.last_error, NO_SMI_FIX)]
    if not tables.tables:
        return [Check("mig", WARN, "nvidia-smi lists no GPUs", "check the driver (nvidia-smi -L)")]
    out = []
    for g, t in sorted(tables.tables.items()):
        name = f"mig {g}"
        if t.error == "MIG mode is not enabled":
            out.append(
                Check(
                    name,
                    WARN,
                    f"MIG mode is off on GPU {t.index}: the placement and resize levers cannot act",
                    f"drain the GPU, then nvidia-smi -i {t.index} -mig 1 (and reset it)",
                )
            )
        elif t.error:
            fix = "set [[gpus]] model" if t.model is None else "check nvidia-smi mig -lgip on this GPU"
            out.append(Check(name, FAIL if t.model is None else WARN, t.error, fix))
        elif t.differences:
            out.append(
                Check(
                    name,
                    OK,
                    f"{t.model.key if t.model else '?'}, driver {t.driver}: the driver's -lgip/-lgipp"
                    f" differ from the built-in table in {len(t.differences)} point(s); the driver's"
                    " is used (tailguard mig-profiles)" + _geometry(t.model),
                )
            )
        else:
            n = len(t.model.profiles) if t.model else 0
            out.append(
                Check(
                    name,
                    OK,
                    f"{t.model.key if t.model else '?'}, driver {t.driver}: MIG on, {n} profiles"
                    " listed, as in the built-in table" + _geometry(t.model),
                )
            )
    return out


def _geometry(m: GpuModel | None) -> str:
    """The GPU's own counts, e.g. '; 12 memory slots, 4 compute slices' (8 and 7 on A100/H100/H200)."""
    return f"; {m.mem_slots} memory slots, {m.compute_slices} compute slices" if m is not None else ""


# What a hypervisor writes into a guest's DMI (sys_vendor, product_name; the keys of systemd's
# virt.c DMI vendor table): found on arm64 too, where cpuinfo has no hypervisor flag. An EC2 bare
# metal instance says "Amazon EC2" as its VMs do; its product name ends in ".metal".
_DMI_HYPERVISORS = (
    "KVM", "OpenStack", "KubeVirt", "Amazon EC2", "QEMU", "VMware", "VMW", "innotek GmbH", "VirtualBox",
    "Xen", "Bochs", "Parallels", "BHYVE", "Hyper-V", "Apple Virtualization", "Google Compute Engine", "Google",
)  # fmt: skip


def in_a_vm(proc_root: str = "/proc", sys_root: str = "/sys") -> bool:
    """A virtual machine: x86's CPUID hypervisor bit (/proc/cpuinfo's flags), a Xen guest's
    /sys/hypervisor/type, or a hypervisor's name in the DMI tables (Azure's "Microsoft Corporation"
    "Virtual Machine" too)."""
    try:
        text = read_small_text(os.path.join(proc_root, "cpuinfo"), errors="replace")
    except OSError:
        text = ""
    if any(line.startswith("flags") and " hypervisor" in line for line in text.splitlines()):
        return True

    def read(*parts: str) -> str:
        try:
            return read_small_text(os.path.join(sys_root, *parts), errors="replace").strip()
        except OSError:
            return ""

    if read("hypervisor", "type"):
        return True
    vendor, product = read("class", "dmi", "id", "sys_vendor"), read("class", "dmi", "id", "product_name")
    if product.endswith(".metal"):
        return False
    if vendor == "Microsoft Corporation" and product == "Virtual Machine":
        return True
    return any(v.startswith(_DMI_HYPERVISORS) for v in (vendor, product) if v)


async def check_topo(nvsmi: NvidiaSmi, timeout_s: float, cfg: Config | None = None) -> list[Check]:
    from actuators.proc import ToolError, run
    from controller.signals.base import ParseError
    from controller.topology import parse_topo_matrix, topology_from_matrix

    try:
        r = await run([nvsmi.path, "topo", "-m"], timeout_s)
    except ToolError as e:
        return [Check("nvidia-smi topo -m", FAIL, str(e), NO_SMI_FIX)]
    if r.rc != 0:
        return [Check("nvidia-smi topo -m", FAIL, f"{r.status}: {r.text.strip()[:200]}", "check the driver")]
    try:
        topo = topology_from_matrix(parse_topo_matrix(r.stdout))
    except ParseError as e:
        return [
            Check(
                "nvidia-smi topo -m",
                FAIL,
                f"cannot parse its output: {e}",
                'report it with the output attached; set [topology] source = "sysfs" meanwhile',
            )
        ]
    out = [Check("nvidia-smi topo -m", OK, f"{len(topo.gpus)} GPU(s) placed on the PCIe/NUMA tree")]
    if (
        cfg is not None
        and not (cfg.topology.source == "topo-matrix" and cfg.topology.topo_matrix_file is not None)
        and not topo.of_kind(NodeKind.SWITCH)
        and in_a_vm(cfg.signals.proc_root, cfg.signals.sys_root)
    ):
        # A hypervisor's virtual root ports: what the devices share on the host is not shown, and
        # the controller goes by measured traffic alone (docs/results.md, "The PCIe tree a VM shows")
        out.append(
            Check(
                "topology view",
                WARN,
                "a VM whose PCIe tree shows no switch: the hypervisor's virtual root ports, not what the"
                " GPUs, drives and NICs share on the host",
                'set [topology] source = "topo-matrix" and topo_matrix_file to the host\'s `nvidia-smi topo -m`'
                " or its NCCL topology XML (aws-ofi-nccl ships one per instance type)",
            )
        )
    return out


async def check_dcgm(cfg: Config, timeout_s: float) -> list[Check]:
    from controller.signals.dcgm import DcgmExporterSampler, pydcgm_available

    mode = cfg.signals.dcgm
    fix = "install DCGM (pydcgm) or run dcgm-exporter and set signals.dcgm_exporter_url"
    if mode == "off":
        return [
            Check(
                "dcgm",
                WARN,
                "signals.dcgm = off: no SM / DRAM activity; compute and memory causes are told from latency alone",
                fix,
            )
        ]
    if mode == "pydcgm" or (mode == "auto" and pydcgm_available()):
        from controller.signals.dcgm_native import PydcgmSampler

        sampler: Any = PydcgmSampler(timeout_s=timeout_s)
        what = "pydcgm"
    elif cfg.signals.dcgm_exporter_url:
        sampler = DcgmExporterSampler(cfg.signals.dcgm_exporter_url, timeout_s=timeout_s)
        what = f"dcgm-exporter {cfg.signals.dcgm_exporter_url}"
    else:
        return [Check("dcgm", WARN, "no pydcgm and no signals.dcgm_exporter_url", fix)]
    r = await sampler.sample(time.time())
    if isinstance(r, Unavailable):
        return [Check("dcgm", WARN, f"{what}: {r.reason}", fix)]
    return [Check("dcgm", OK, f"{what}: {len(r.gpus)} GPU(s)")]


# ---------------------------------------------------------------- cgroups, latency, broker, files


_CONTROLLER = re.compile(r"[a-z_]+")  # a controller's name: cpuset, io, memory, pids, ...


def _controllers(raw: bytes) -> list[str]:
    """The names in a cgroup.controllers (the kernel writes "cpuset cpu io memory pids\n"), or
    ValueError saying what is wrong with content that is not such a list."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    names = [t for t in re.split(r"[ \n]+", text) if t]
    bad = next((t for t in names if not _CONTROLLER.fullmatch(t)), None)
    if bad is not None:
        raise ValueError(f"{shown(bad)} is no controller name")
    return names


async def check_cgroups(cfg: Config) -> list[Check]:
    from controller.signals.cgroup import CgroupReading, CgroupSampler

    root = cfg.host.cgroup_root
    try:
        io = CgroupIO(root, cfg.host.cgroup_version)
    except CgroupError as e:
        return [Check("cgroup", FAIL, str(e), "mount cgroup v2 (or v1 blkio) and set host.cgroup_root")]
    out = []
    if io.version == "v2":
        path = Path(io.root) / "cgroup.controllers"
        try:  # a regular file of bounded size: a FIFO there hung doctor, /dev/zero filled memory
            ctl = _controllers(read_small_bytes(path))
        except OSError as e:
            return [Check("cgroup", FAIL, f"cannot read {path}: {e.strerror or e}", "check host.cgroup_root")]
        except ValueError as e:  # garbage read as a list without io, the file unnamed
            return [
                Check(
                    "cgroup",
                    FAIL,
                    f"{path}: {e}: not a space-separated list of controller names",
                    "the kernel writes this file: is host.cgroup_root a cgroup v2 mount?",
                )
            ]
        if "io" not in ctl:
            out.append(
                Check(
                    "cgroup",
                    FAIL,
                    f"cgroup v2 at {io.root} without the io controller",
                    "boot with the io controller available (it is in every current kernel)",
                )
            )
        else:
            out.append(Check("cgroup", OK, f"cgroup v2 at {io.root}, io controller available"))
    else:
        # blkio throttles what it accounts to a group: its reads and direct writes. Buffered writes
        # are issued by the kernel's flusher threads from the root group (Red Hat KB 3726711), so
        # a cap does not hold them; v2 charges writeback to the group that dirtied the pages.
        out.append(
            Check(
                "cgroup",
                OK,
                f"cgroup v1 blkio at {io.root}: caps hold reads and direct writes, not buffered writes"
                " (the flusher writes them from the root group; cgroup v2 holds those too)",
            )
        )
    groups = {t.name: t.cgroup for t in cfg.tenants if t.cgroup}
    sensitive = [t.name for t in cfg.tenants if t.role == "sensitive"]  # their restarts: their processes
    sampler = CgroupSampler(groups, root, cfg.host.cgroup_version, procs_of=sensitive, proc_root=cfg.signals.proc_root)
    reading = await sampler.sample(time.time()) if groups else None
    for i, t in enumerate(cfg.tenants):
        name = f"cgroup {t.name}"
        if not t.cgroup:
            if t.role in ("bulk", "compute"):
                out.append(
                    Check(
                        name, WARN, "no cgroup: it cannot be throttled or charged with I/O", f"set tenants[{i}].cgroup"
                    )
                )
            continue
        try:
            g = io.group(t.cgroup)
        except (CgroupGone, CgroupError, PathError) as e:  # PathError: a symlink out of the root
            out.append(Check(name, FAIL, str(e), f"create the group or fix tenants[{i}].cgroup"))
            continue
        if io.version == "v2" and t.role in ("bulk", "compute") and not os.path.lexists(g / "io.max"):
            out.append(
                Check(
                    name,
                    FAIL,
                    f"{g}/io.max missing: io is not enabled for its parent",
                    f"echo +io > {g.parent}/cgroup.subtree_control",
                )
            )
            continue
        if t.role in ("bulk", "compute"):
            # the caps in force, read as the actuator reads them before every cap it sets: a
            # directory, a FIFO or garbage there fails each cap, and only existing was checked
            try:
                io.read(t.cgroup)
            except CgroupError as e:
                out.append(Check(name, FAIL, str(e), "the kernel writes these files: is host.cgroup_root a cgroupfs?"))
                continue
        why = []
        if reading is not None and not isinstance(reading, Unavailable):
            why = [
                f"{k.split(':', 2)[-1]}: {v}"
                for k, v in reading.unavailable.items()
                if k.startswith(f"cgroup:{t.name}")
            ]
        elif isinstance(reading, Unavailable):
            why = [reading.reason]
        if why:
            out.append(
                Check(name, WARN, f"{t.cgroup}: " + "; ".join(why), "check the group's io.stat, PSI, cgroup.procs")
            )
        else:
            c = reading.tenants.get(t.name) if isinstance(reading, CgroupReading) else None
            procs = (
                f"; its processes listed ({len(c.processes)}: a restart replaces them all)"
                if c is not None and c.processes is not None
                else ""
            )
            out.append(Check(name, OK, f"{g}: I/O counters and PSI readable{procs}"))
    return out


async def check_latency(cfg: Config) -> list[Check]:
    from controller.signals.collect import latency_sampler

    out = []
    for i, t in enumerate(cfg.tenants):
        if t.latency is None:
            continue
        name = f"latency {t.name}"
        src = t.latency
        if src.kind == "mqtt":
            ok = cfg.exporters.mqtt.enabled
            out.append(
                Check(
                    name,
                    OK if ok else FAIL,
                    "pushed over MQTT (see the mqtt line)",
                    "set exporters.mqtt.enabled = true",
                )
            )
            continue
        sampler = latency_sampler(t)
        if sampler is None:
            continue
        where = src.url if src.kind == "prometheus" else src.path
        r = await sampler.sample(time.time())
        # A histogram window needs two scrapes: the first one answering proves the path.
        if isinstance(r, Unavailable) and not r.reason.startswith("first scrape"):
            fix = f"fix tenants[{i}].latency" + (" (is the server up?)" if src.kind == "prometheus" else "")
            out.append(Check(name, FAIL if t.role == "sensitive" else WARN, r.reason, fix))
        else:
            out.append(_slo_bucket_check(name, sampler, f"{src.kind} {where}: readable"))
    return out


def _slo_bucket_check(name: str, sampler: object, readable: str) -> Check:
    """WARN where a histogram source puts the SLO strictly inside one of its buckets
    (controller.signals.latency.slo_inside_bucket: the daemon logs the same at its first scrape)."""
    from controller.signals.latency import JsonlLatencySampler, PrometheusLatencySampler

    jsonl = sampler if isinstance(sampler, JsonlLatencySampler) else None
    if jsonl is not None and jsonl.time_field is not None and jsonl.history is None:
        readable += (
            f"; its first line has no {jsonl.time_field} in Unix seconds (or the file was empty or"
            " missing): the tenant's rate before tailguard started is not known"
        )
    prom = sampler if isinstance(sampler, PrometheusLatencySampler) else None
    note = prom.bucket_note() if prom is not None else None
    if prom is not None and not prom.history_known:
        readable += (
            "; no process_start_time_seconds in the scrape: the tenant's rate before tailguard started is not"
            ' known (a multiprocess server exports none; docs/decisions.md, "A tenant\'s history")'
        )
    if note is None:
        return Check(name, OK, readable)
    return Check(name, WARN, f"{readable}; {note[0]}", note[1])


async def check_mqtt(cfg: Config, timeout_s: float) -> list[Check]:
    mc = cfg.exporters.mqtt
    if not mc.enabled:
        return [Check("mqtt", OK, "exporters.mqtt not enabled: nothing to check")]
    import aiomqtt

    from controller.exporters.mqtt import MqttBridge, MqttOptions

    password = None
    if mc.password_file:
        try:
            password = read_mqtt_password(mc.password_file)
        except OSError as e:
            return [
                Check(
                    "mqtt",
                    FAIL,
                    f"password_file {mc.password_file}: {e.strerror or e}",
                    "fix exporters.mqtt.password_file",
                )
            ]
    if mc.tls_ca:
        # read by the TLS layer on the probe's loop, blocking: a FIFO there hung doctor past every
        # timeout, and a CA file it could not load was put down to the broker or its URL
        import ssl

        try:
            os.close(open_regular(mc.tls_ca))
            ssl.create_default_context(cafile=mc.tls_ca)
        except ssl.SSLError as e:
            why = f"not PEM CA certificates ({e.reason or e})"
            return [Check("mqtt", FAIL, f"tls_ca {mc.tls_ca}: {why}", "fix exporters.mqtt.tls_ca")]
        except OSError as e:
            return [Check("mqtt", FAIL, f"tls_ca {mc.tls_ca}: {e.strerror or e}", "fix exporters.mqtt.tls_ca")]
    bridge = MqttBridge(
        MqttOptions(
            url=mc.url, host_name=cfg.host.name, username=mc.username, password=password, tls=mc.tls, tls_ca=mc.tls_ca
        )
    )
    try:
        await bridge.probe(min(timeout_s, 3.0))
    except (aiomqtt.MqttError, OSError, TimeoutError) as e:
        return [
            Check(
                "mqtt",
                FAIL,
                f"broker {mc.url}: {type(e).__name__}: {e}",
                "start the broker or fix exporters.mqtt.url / credentials",
            )
        ]
    return [Check("mqtt", OK, f"broker {mc.url} accepted a connection")]


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "no regular file")


LOCK_FIX = "remove it (the daemon makes it): without its lock a second tailguard on this directory is not stopped"


async def check_state_dir(cfg: Config) -> list[Check]:
    d = Path(cfg.host.state_dir)
    if not d.exists():
        parent = next((p for p in d.parents if p.exists()), Path("/"))
        ok = parent.is_dir() and os.access(parent, os.W_OK)
        return [
            Check(
                "state dir",
                WARN if ok else FAIL,
                f"{d} does not exist" + ("" if ok else f"; {parent} is not writable"),
                "systemd's StateDirectory= creates it; for a manual run: install -d " + str(d),
            )
        ]
    if not d.is_dir():
        return [Check("state dir", FAIL, f"{d} is not a directory", "fix host.state_dir")]
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tailguard-doctor-", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return [
            Check(
                "state dir",
                FAIL,
                f"{d} is not writable: {e.strerror or e}",
                "make it writable for the daemon's user (a read-only mount? ReadWritePaths=)",
            )
        ]
    free = shutil.disk_usage(d).free
    if free < MIN_FREE_BYTES:
        return [
            Check(
                "state dir",
                WARN,
                f"{d}: only {free >> 20} MiB free",
                f"free at least {MIN_FREE_BYTES >> 20} MiB (journal, state, traces)",
            )
        ]
    from controller.statelock import LOCK_NAME, holder

    lock = d / LOCK_NAME
    try:  # holder() opens it blocking: a FIFO there hung doctor past every timeout
        mode: int | None = os.stat(lock).st_mode
    except FileNotFoundError:
        mode = None  # none made yet (or a dangling link the daemon's open creates the target of)
    except OSError as e:
        return [Check("state dir", WARN, f"lock file {lock}: {e.strerror or e}", LOCK_FIX)]
    if mode is not None and not stat.S_ISREG(mode):
        return [Check("state dir", WARN, f"lock file {lock} is {_file_kind(mode)}, not a regular file", LOCK_FIX)]
    held, pid = holder(str(d))
    running = f"; a daemon{f' (pid {pid})' if pid else ''} runs with it" if held == "held" else ""
    return [Check("state dir", OK, f"{d} writable, {free >> 20} MiB free{running}")]


# A measured relaunch this far off the configured one (either way) is worth the operator's look
OUTAGE_OFF = 1.5


async def check_outages(cfg: Config) -> list[Check]:
    """The daemon's measured relaunches (its status file) against each tenant's `relaunch_s`. The
    controller prices a tenant's moves with its last measured relaunch, but the first move of all
    on the configured figure: a start that takes twice as long spends twice the outage it was
    bought for, and on a p99 tenant that can be the run's p99 (docs/results.md, "Actuators as a
    host has them"). Nothing to compare before a daemon has moved anyone; a warm hand-over's gap
    is measured 0 as a rule, so only restart moves are compared."""
    from actuators.moves import relaunch_of
    from controller.status import StatusError, read_status

    try:
        data = read_status(Path(cfg.host.state_dir) / "status.json")
    except StatusError:
        return []  # no daemon has run with this state dir yet, or it is not ours to read
    out = []
    for t in cfg.tenants:
        recs = (data.get("outages") or {}).get(t.name) or []
        # a warm hand-over's gap is no relaunch
        seen = sorted(s for r in recs if (s := relaunch_of(r)) is not None and r["kind"] != "warm_move")
        if not seen:
            out.extend(_own_restart_check(t, (data.get("tenants") or {}).get(t.name)))
        if not seen or t.relaunch_s <= 0:
            continue
        mid, conf = seen[len(seen) // 2], t.relaunch_s
        what = f"{t.name}: measured relaunch {mid:g} s (median of {len(seen)} moves), relaunch_s {conf:g} s"
        if mid > OUTAGE_OFF * conf:
            fix = f"set relaunch_s = {mid:g} for {t.name}: its first move is priced on it, and ran {mid / conf:.1f}x"
            out.append(Check("outages", WARN, what, fix))
        elif mid < conf / OUTAGE_OFF:
            fix = f"set relaunch_s = {mid:g} for {t.name}: moves priced too dear wait longer than they need"
            out.append(Check("outages", WARN, what, fix))
        else:
            out.append(Check("outages", OK, what))
        if t.launcher is not None and t.launcher.handover == "restart":
            out.extend(_readiness_check(t.name, seen[-1], t.launcher.readiness_timeout_s))
    return out


def _own_restart_check(t: TenantConfig, view: object) -> list[Check]:
    """Before any move is measured: the shortest of the tenant's own restarts (the status file's
    tenant view) against its relaunch_s. A restart that took longer says the configured relaunch is
    short; the daemon already prices its moves at the restart's seconds (fsm.outage.priced_relaunch),
    but the figure belongs in the config (and a daemon started afresh has seen no restart yet)."""
    own = view.get("own_restart_s") if isinstance(view, dict) else None
    if t.launcher is not None and t.launcher.handover == "warm":
        return []  # its moves' outage is a switch-over gap, not a relaunch
    if not isinstance(own, int | float) or isinstance(own, bool) or own <= OUTAGE_OFF * t.relaunch_s:
        return []
    what = f"{t.name}: restarted on its own in {own:g} s (its shortest), relaunch_s {t.relaunch_s:g} s"
    fix = f"set relaunch_s = {own:g} for {t.name} (or its measured start-up): moves are priced at it until one is"
    fix += " measured"
    return [Check("outages", WARN, what, fix)]


def _readiness_check(tenant: str, longest: float, wait: float) -> list[Check]:
    """The longest measured relaunch against the launcher's readiness wait: a start past the wait
    fails the move, and moving back is a second relaunch (in the lab, docs/results.md "The
    launcher's readiness wait", a failed move's outage was the wait plus a relaunch: 2 to 7 times
    what was priced). check-config asks for twice relaunch_s; this asks it of what was measured."""
    what = f"{tenant}: measured relaunch up to {longest:g} s, launcher.readiness_timeout_s {wait:g} s"
    if 2.0 * longest <= wait:
        return [Check("outages", OK, what)]
    fix = (
        f"raise launcher.readiness_timeout_s for {tenant} to {math.ceil(2.0 * longest)} or more: a start slower"
        " than it fails the move, and the move back is a second outage"
    )
    return [Check("outages", WARN, what, fix)]


async def check_notify_socket() -> list[Check]:
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return [Check("notify socket", OK, "NOTIFY_SOCKET unset: not under systemd (the unit sets it, Type=notify)")]
    addr = short_text(value, 120)  # as shown: thousands of characters would bury the line
    if value.startswith("@"):
        return [Check("notify socket", OK, f"{addr}: abstract socket (cannot be checked without sending)")]
    try:
        st = os.stat(value)
    except OSError as e:
        return [
            Check(
                "notify socket",
                FAIL,
                f"NOTIFY_SOCKET={addr}: {e.strerror or e}",
                "systemd sets it; unset it for a manual run",
            )
        ]
    if not stat.S_ISSOCK(st.st_mode):
        return [Check("notify socket", FAIL, f"NOTIFY_SOCKET={addr} is not a socket", "unset it for a manual run")]
    return [Check("notify socket", OK, f"{addr} is a socket")]


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"exit": exit_code(checks), "checks": [asdict(c) for c in checks]}
