"""Topology discovery: the PCIe tree from sysfs, or the `nvidia-smi topo -m` matrix as a fallback;
exports for cluster schedulers (node labels, Volcano HyperNode manifests).

The model and its distance (tier of the lowest common ancestor) are in fsm/topology.py. Here:

* sysfs: `/sys/bus/pci/devices/<bdf>` resolves to `/sys/devices/pciDDDD:BB/<root port>/<switch
  upstream>/<downstream>/.../<bdf>`; the `pciDDDD:BB` host bridge is a root complex, every bridge
  on the way is a switch-tier node, `numa_node` / `local_cpulist` give the NUMA placement.
  GPUs are NVIDIA (vendor 0x10de) display/3D controllers (class 0x0300xx / 0x0302xx), named
  gpu<i> in PCI bus order, the order NVML and nvidia-smi use by default. NVMe block devices come
  from `/sys/block/*` (aliases: name, MAJ:MIN), NICs from `/sys/class/net/*` and
  `/sys/class/infiniband/*` (aliases: every name of the PCI function).
* `nvidia-smi topo -m`: relations X, NV#, PIX, PXB, PHB, NODE, SYS (the legend nvidia-smi prints),
  CPU / NUMA affinity columns, optional `GPU NUMA ID`, a NIC legend on newer drivers. Captured
  outputs carry ANSI codes in the header, tabs expanded to spaces, and empty trailing cells.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.signals.base import ParseError
from fsm.mig import MODELS
from fsm.topology import HOST_ID, Node, NodeKind, Tier, Topology
from schema.files import read_small_text
from schema.jsontext import ascii_digits, text_lines

# -- cpulists --------------------------------------------------------------------------------
# ASCII digits of at most 6 (\d took "١", and int() of 5,000 digits raised its own ValueError)
_CPULIST = re.compile(r"^[0-9]{1,6}(-[0-9]{1,6})?(,[0-9]{1,6}(-[0-9]{1,6})?)*$")
MAX_CPUS = 65536  # far above any host (Linux's NR_CPUS tops out at 8192)


def parse_cpulist(text: str) -> tuple[int, ...]:
    """'0-23,48-71' -> (0, ..., 23, 48, ..., 71). Raises ValueError on anything else."""
    s = text.strip()
    if not s:
        return ()
    if not _CPULIST.match(s):
        raise ValueError(f"not a CPU list: {s[:40]!r}")
    out: list[int] = []
    for part in s.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi) if hi else int(lo)
        if b < a or b - a > MAX_CPUS:
            raise ValueError(f"bad CPU range {part!r}")
        out.extend(range(a, b + 1))
        # each range is bounded, their number is not: "0-65535," repeated over a 64 KiB file
        # was half a billion CPUs, gigabytes of memory
        if len(out) > MAX_CPUS:
            raise ValueError(f"more than {MAX_CPUS} CPUs: {s[:40]!r}...")
    return tuple(out)


def format_cpulist(cpus: Iterable[int]) -> str:
    xs = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


# -- nvidia-smi topo -m ----------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_REL = re.compile(r"^(X|SYS|NODE|PHB|PXB|PIX|SOC|NV[0-9]+)$")
_DEVNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_AFFINITY_COLS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
RELATION_TIER = {
    "PIX": Tier.SWITCH,
    "PXB": Tier.SWITCH,
    "PHB": Tier.ROOT_COMPLEX,
    "NODE": Tier.NUMA,
    "SYS": Tier.SYSTEM,
}


@dataclass(frozen=True, slots=True)
class MatrixGpu:
    cpus: str | None  # as printed, e.g. "0-55,112-167"
    numa: int | None
    gpu_numa_id: int | None = None


@dataclass(frozen=True, slots=True)
class TopoMatrix:
    devices: tuple[str, ...]  # column names as printed, in order
    links: Mapping[str, Mapping[str, str]]  # row -> column -> relation
    gpus: Mapping[str, MatrixGpu]
    nic_legend: Mapping[str, str] = field(default_factory=dict)  # NIC0 -> mlx5_0

    @property
    def nics(self) -> dict[str, str]:
        """Matrix NIC name -> device name: from the NIC legend, else the column names themselves."""
        if self.nic_legend:
            return dict(self.nic_legend)
        return {d: d for d in self.devices if not _is_gpu(d)}

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": {g: {"numa": v.numa, "cpus": v.cpus} for g, v in self.gpus.items()},
            "links": {r: dict(cols) for r, cols in self.links.items()},
            "nics": self.nics,
        }


def _is_gpu(name: str) -> bool:
    return re.fullmatch(r"GPU\d+", name) is not None


def _header_tokens(line: str) -> tuple[list[str], list[str]]:
    text = line
    affinity = []
    for col in _AFFINITY_COLS:
        if col in text:
            affinity.append((text.index(col), col))
            text = text.replace(col, " ")
    return text.split(), [c for _, c in sorted(affinity)]


def parse_topo_matrix(text: str, source: str = "nvidia-smi topo -m") -> TopoMatrix:
    """Parse a captured `nvidia-smi topo -m`; a ParseError names the offending line."""
    lines = [_ANSI.sub("", ln).rstrip("\r") for ln in text_lines(text)]
    start = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if start is None:
        raise ParseError(source, None, "empty input")
    devices, affinity = _header_tokens(lines[start])
    hline = start + 1
    if not devices:
        raise ParseError(source, hline, "header names no devices")
    for d in devices:
        if not _DEVNAME.match(d):
            raise ParseError(source, hline, f"unexpected column name {d[:40]!r}")
    if len(set(devices)) != len(devices):
        raise ParseError(source, hline, "a column name is repeated")
    links: dict[str, dict[str, str]] = {}
    gpus: dict[str, MatrixGpu] = {}
    i = start + 1
    while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith("Legend"):
        n = i + 1
        toks = lines[i].split()
        row = toks[0]
        if row not in devices:
            raise ParseError(source, n, f"row {row[:40]!r} is not a column of the header")
        if row in links:
            raise ParseError(source, n, f"row {row} appears twice")
        rels = toks[1 : 1 + len(devices)]
        if len(rels) < len(devices):
            raise ParseError(source, n, f"row {row} has {len(rels)} relations, the header has {len(devices)} columns")
        for col, rel in zip(devices, rels, strict=True):
            if not _REL.match(rel):
                raise ParseError(source, n, f"row {row}, column {col}: unknown relation {rel[:20]!r}")
            if (col == row) != (rel == "X"):
                raise ParseError(source, n, f"row {row}, column {col}: 'X' must be exactly on the diagonal")
        links[row] = dict(zip(devices, rels, strict=True))
        extra = toks[1 + len(devices) :]
        if len(extra) > len(affinity):
            raise ParseError(source, n, f"row {row} has {len(extra)} affinity cells, header has {len(affinity)}")
        cells = dict(zip(affinity, extra, strict=False))
        if _is_gpu(row):
            gpus[row] = MatrixGpu(
                cpus=_cpus_cell(cells.get("CPU Affinity"), source, n),
                numa=_int_cell(cells.get("NUMA Affinity"), source, n, "NUMA Affinity"),
                gpu_numa_id=_int_cell(cells.get("GPU NUMA ID"), source, n, "GPU NUMA ID"),
            )
        i += 1
    missing = [d for d in devices if d not in links]
    if missing:
        raise ParseError(source, i, f"no row for {', '.join(missing)} after this line (truncated output?)")
    for r in devices:
        for c in devices:
            a, b = links[r][c], links[c][r]
            if a != b:
                raise ParseError(source, None, f"matrix is not symmetric: {r}/{c} is {a} but {c}/{r} is {b}")
    legend = _nic_legend(lines, i, devices, source)
    return TopoMatrix(tuple(devices), links, gpus, legend)


def _cpus_cell(v: str | None, source: str, n: int) -> str | None:
    if v is None or v == "N/A":
        return None
    try:
        parse_cpulist(v)
    except ValueError as e:
        raise ParseError(source, n, f"CPU Affinity: {e}") from None
    return v


def _int_cell(v: str | None, source: str, n: int, what: str) -> int | None:
    if v is None or v == "N/A":
        return None
    if not ascii_digits(v) or len(v) > 6:
        raise ParseError(source, n, f"{what}: expected a number or N/A, got {v[:20]!r}")
    return int(v)


def _nic_legend(lines: list[str], start: int, devices: list[str], source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    in_legend = False
    for i in range(start, len(lines)):
        s = lines[i].strip()
        if s == "NIC Legend:":
            in_legend = True
            continue
        if not in_legend or not s:
            continue
        name, sep, dev = s.partition(":")
        if not sep or not dev.strip() or not _DEVNAME.match(name) or not _DEVNAME.match(dev.strip()):
            raise ParseError(source, i + 1, f"expected 'NICn: device' in the NIC legend, got {s[:60]!r}")
        if name not in devices:
            raise ParseError(source, i + 1, f"NIC legend names {name}, which is not a column")
        out[name] = dev.strip()
    return out


class _UF:
    def __init__(self, items: Iterable[str]) -> None:
        self.p = {x: x for x in items}

    def find(self, x: str) -> str:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for x in self.p:
            out.setdefault(self.find(x), []).append(x)
        return out


def _gpu_id(name: str) -> str:
    return "gpu" + name[3:] if _is_gpu(name) else name


def topology_from_matrix(m: TopoMatrix) -> Topology:
    """A Topology consistent with the matrix: devices that are PIX/PXB share a switch node, PHB a
    root complex, NODE a NUMA node, SYS nothing below the host. NVLink (NV#) is not PCIe and says
    nothing about the tree. GPUs are gpu<i> (alias GPU<i>); NICs take their legend name."""
    devs = list(m.devices)
    levels = {
        Tier.SWITCH: ("PIX", "PXB"),
        Tier.ROOT_COMPLEX: ("PIX", "PXB", "PHB"),
        Tier.NUMA: ("PIX", "PXB", "PHB", "NODE"),
    }
    ufs = {t: _UF(devs) for t in levels}
    for r in devs:
        for c in devs:
            rel = m.links[r][c]
            for t, rels in levels.items():
                if rel in rels:
                    ufs[t].union(r, c)
    numa_of_dev = {g: v.numa for g, v in m.gpus.items()}
    nodes: list[Node] = [Node(HOST_ID, NodeKind.HOST, None)]
    made: set[str] = {HOST_ID}
    cpus_by_numa: dict[int, set[int]] = {}
    for v in m.gpus.values():
        if v.numa is not None and v.cpus:
            cpus_by_numa.setdefault(v.numa, set()).update(parse_cpulist(v.cpus))
    numa_parent: dict[str, str] = {}
    for k, (root, members) in enumerate(sorted(ufs[Tier.NUMA].groups().items())):
        known = {x for d in members if (x := numa_of_dev.get(d)) is not None}
        if len(known) == 1:
            n = known.pop()
            nid = f"numa{n}"
            if nid not in made:
                nodes.append(Node(nid, NodeKind.NUMA, HOST_ID, numa=n, cpus=tuple(sorted(cpus_by_numa.get(n, ())))))
                made.add(nid)
        elif len(members) > 1:
            nid = f"numa-group{k}"
            nodes.append(Node(nid, NodeKind.NUMA, HOST_ID))
            made.add(nid)
        else:
            nid = HOST_ID
        numa_parent[root] = nid
    parent: dict[str, str] = {}
    for k, (_root, members) in enumerate(sorted(ufs[Tier.ROOT_COMPLEX].groups().items())):
        up = numa_parent[ufs[Tier.NUMA].find(members[0])]
        if len(members) > 1:
            rc = f"rc{k}"
            nodes.append(Node(rc, NodeKind.ROOT_COMPLEX, up))
            up = rc
        for d in members:
            parent[d] = up
    for k, (_root, members) in enumerate(sorted(ufs[Tier.SWITCH].groups().items())):
        if len(members) > 1:
            sw = f"sw{k}"
            nodes.append(Node(sw, NodeKind.SWITCH, parent[members[0]]))
            for d in members:
                parent[d] = sw
    nics = m.nics
    for d in devs:
        if _is_gpu(d):
            nodes.append(Node(_gpu_id(d), NodeKind.GPU, parent[d], aliases=(d,)))
        else:
            name = nics.get(d, d)
            aliases = (d,) if name != d else ()
            nodes.append(Node(name, NodeKind.NIC, parent[d], aliases=aliases))
    return Topology(tuple(nodes))


# -- sysfs ---------------------------------------------------------------------------------
_BDF = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_HOSTBRIDGE = re.compile(r"^pci[0-9a-fA-F]{4}:[0-9a-fA-F]{2}$")
# "2.5", "16.0": [0-9.]+ also took "1.2.3" (float() raised) and 400 digits (float() said inf)
_GT_S = re.compile(r"^\s*([0-9]{1,3}(?:\.[0-9]{1,6})?)\s*GT/s")


_ATTR_LIMIT = 1 << 16  # a sysfs attribute is at most a page


def _read(path: str) -> str | None:
    """A sysfs attribute, None when unreadable. Only a regular file of at most _ATTR_LIMIT bytes:
    open() of a FIFO blocked for ever, and read() of a link to /dev/zero filled the memory."""
    try:
        return read_small_text(path, _ATTR_LIMIT, errors="replace").strip()
    except OSError:
        return None


def link_bps(speed: str | None, width: str | None) -> float | None:
    """Usable bytes/s of a PCIe link from sysfs current_link_speed/width ('16.0 GT/s PCIe', '16'):
    8b/10b encoding up to 5 GT/s (Gen1/2), 128b/130b from 8 GT/s (Gen3+); Gen6's FLIT mode is close
    to 242/256, ignored here."""
    if not speed or not width:
        return None
    m = _GT_S.match(speed)
    # x1 to x32; thousands of digits would make int() raise a bare ValueError
    if not m or not ascii_digits(width.strip()) or len(width.strip()) > 3:
        return None
    gts, lanes = float(m.group(1)), int(width.strip())
    if gts <= 0 or lanes <= 0:
        return None
    eff = 0.8 if gts <= 5.0 else 128 / 130
    return gts * 1e9 * eff * lanes / 8


def _pci_chain(sys_root: str, real: str) -> list[str] | None:
    """['pci0000:00', '0000:00:01.0', ..., last BDF] for a resolved sysfs path, or None if virtual."""
    devroot = os.path.realpath(os.path.join(sys_root, "devices"))
    rel = os.path.relpath(real, devroot)
    if rel.startswith(".."):
        return None
    parts = rel.split(os.sep)
    if not parts or not _HOSTBRIDGE.match(parts[0]):
        return None
    chain = [parts[0]]
    for p in parts[1:]:
        if _BDF.match(p):
            chain.append(p)
        else:
            break
    return chain if len(chain) > 1 else None


@dataclass(slots=True)
class _Dev:
    bdf: str
    chain: list[str]
    kind: NodeKind
    names: list[str] = field(default_factory=list)


def discover_sysfs(sys_root: str = "/sys") -> Topology:
    """The PCIe tree of the GPUs, NVMe drives and NICs under `sys_root`; devices that are not on
    PCI (virtio without PCI, loop devices) are left out. Unreadable attributes become None."""
    pci_dir = os.path.join(sys_root, "bus", "pci", "devices")
    pci_root = os.path.join(sys_root, "devices")
    devs: dict[str, _Dev] = {}
    try:
        entries = sorted(os.listdir(pci_dir))
    except OSError:
        entries = []
    gpus = []
    for bdf in entries:
        path = os.path.join(pci_dir, bdf)
        vendor = (_read(os.path.join(path, "vendor")) or "").lower()
        cls = (_read(os.path.join(path, "class")) or "").lower()
        if vendor == "0x10de" and cls.startswith(("0x0300", "0x0302")):
            chain = _pci_chain(sys_root, os.path.realpath(path))
            if chain:
                gpus.append(_Dev(bdf, chain, NodeKind.GPU))
    gpus.sort(key=lambda d: d.bdf.lower())  # PCI bus order = NVML's default enumeration
    for i, d in enumerate(gpus):
        d.names = [f"gpu{i}", d.bdf]
        devs[d.bdf] = d

    def attach(kind: NodeKind, base: str, name: str, extra: Iterable[str] = ()) -> None:
        chain = _pci_chain(sys_root, os.path.realpath(os.path.join(base, name)))
        if not chain:
            return
        bdf = chain[-1]
        if bdf in devs and devs[bdf].kind is NodeKind.GPU:
            return
        d = devs.setdefault(bdf, _Dev(bdf, chain, kind))
        for n in (name, *extra):
            if n not in d.names:
                d.names.append(n)

    block = os.path.join(sys_root, "block")
    blocks: list[tuple[str, str]] = []
    for name in _listdir(block):
        if name.startswith("nvme") and not _NVME_PATH.match(name):
            majmin = _read(os.path.join(block, name, "dev")) or ""
            blocks.append((name, majmin))
    ib = os.path.join(sys_root, "class", "infiniband")
    for name in _listdir(ib):
        attach(NodeKind.NIC, ib, name)
    net = os.path.join(sys_root, "class", "net")
    for name in _listdir(net):
        attach(NodeKind.NIC, net, name)
    nodes: dict[str, Node] = {HOST_ID: Node(HOST_ID, NodeKind.HOST, None)}
    numa_dir = os.path.join(sys_root, "devices", "system", "node")
    for name in _listdir(numa_dir):
        if re.fullmatch(r"node[0-9]{1,6}", name):
            n = int(name[4:])
            cpus = _read(os.path.join(numa_dir, name, "cpulist")) or ""
            try:
                cl = parse_cpulist(cpus)
            except ValueError:
                cl = ()
            nodes[f"numa{n}"] = Node(f"numa{n}", NodeKind.NUMA, HOST_ID, numa=n, cpus=cl)

    def attr(bdf: str, chain: list[str], a: str) -> str | None:
        return _read(os.path.join(pci_root, *chain[: chain.index(bdf) + 1], a))

    def ensure_chain(chain: list[str]) -> str:
        """Create the host bridge and bridges above the device; return the parent id."""
        hb = chain[0]
        if hb not in nodes:
            numa = None
            for b in chain[1:]:
                v = attr(b, chain, "numa_node")
                # "-1" (no NUMA) or a node number; lstrip("-").isdecimal() let "--1", "٣" and 5,000
                # digits through to int(), which raised or made a node of them
                if v is not None and re.fullmatch(r"[0-9]{1,6}", v):
                    numa = int(v)
                    break
            up = f"numa{numa}" if numa is not None and f"numa{numa}" in nodes else HOST_ID
            if numa is not None and up == HOST_ID:
                nodes[f"numa{numa}"] = Node(f"numa{numa}", NodeKind.NUMA, HOST_ID, numa=numa)
                up = f"numa{numa}"
            cpus: tuple[int, ...] = ()
            lc = attr(chain[1], chain, "local_cpulist")
            if lc:
                try:
                    cpus = parse_cpulist(lc)
                except ValueError:
                    cpus = ()
            nodes[hb] = Node(hb, NodeKind.ROOT_COMPLEX, up, cpus=cpus)
        parent = hb
        for b in chain[1:-1]:
            if b not in nodes:
                nodes[b] = Node(
                    b,
                    NodeKind.SWITCH,
                    parent,
                    link_bps=link_bps(attr(b, chain, "current_link_speed"), attr(b, chain, "current_link_width")),
                    bdf=b,
                )
            parent = b
        return parent

    models = {pid: m.key for m in MODELS.values() for pid in m.pci_device_ids}
    out_nodes: list[Node] = []
    for d in sorted(devs.values(), key=lambda d: (d.kind != NodeKind.GPU, d.bdf)):
        parent = ensure_chain(d.chain)
        lbps = link_bps(attr(d.bdf, d.chain, "current_link_speed"), attr(d.bdf, d.chain, "current_link_width"))
        if d.kind is NodeKind.GPU:
            dev_id = attr(d.bdf, d.chain, "device") or ""
            model = models.get(int(dev_id, 16)) if re.fullmatch(r"0x[0-9a-fA-F]+", dev_id) else None
            out_nodes.append(
                Node(
                    d.names[0], NodeKind.GPU, parent, link_bps=lbps, bdf=d.bdf, model=model, aliases=tuple(d.names[1:])
                )
            )
        else:
            out_nodes.append(Node(d.names[0], d.kind, parent, link_bps=lbps, bdf=d.bdf, aliases=(*d.names[1:], d.bdf)))
    # NVMe namespaces: one node per block device, under its controller's PCI parent
    for name, majmin in blocks:
        real = os.path.realpath(os.path.join(block, name))
        chain = _pci_chain(sys_root, real) or _nvme_head_chain(sys_root, real)
        if not chain:
            continue
        parent = ensure_chain(chain)
        bdf = chain[-1]
        lbps = link_bps(attr(bdf, chain, "current_link_speed"), attr(bdf, chain, "current_link_width"))
        aliases = tuple(a for a in (majmin, bdf) if a)
        out_nodes.append(Node(name, NodeKind.NVME, parent, link_bps=lbps, bdf=bdf, aliases=aliases))
    return Topology((*nodes.values(), *out_nodes))


# Native NVMe multipath (the kernel's default for a drive that says it may have several
# controllers, e.g. dual-port U.2): /sys/block/nvme0n1 is the namespace's virtual head,
# devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1, the disk diskstats and io.max name; its
# paths nvme<s>c<c>n<n> sit under the controllers, hidden (no /dev node). The head was left out and
# the hidden path taken for the drive, under a name nothing else uses.
_NVME_PATH = re.compile(r"^nvme[0-9]+c[0-9]+n[0-9]+$")
_NVME_CTRL = re.compile(r"^nvme([0-9]{1,6})$")


def _nvme_head_chain(sys_root: str, real: str) -> list[str] | None:
    """The PCI chain of a multipath namespace head: its subsystem's first controller on PCI (the
    subsystem directory links to each: nvme0 -> .../0000:b7:00.0/nvme/nvme0). None for anything
    else (NVMe over fabrics, a virtual disk)."""
    subsys = os.path.dirname(real)
    if not re.fullmatch(r"nvme-subsys[0-9]+", os.path.basename(subsys)):
        return None
    ctrls = sorted((int(m[1]), m[0]) for c in _listdir(subsys) if (m := _NVME_CTRL.match(c)))
    for _, c in ctrls:
        chain = _pci_chain(sys_root, os.path.realpath(os.path.join(subsys, c)))
        if chain:
            return chain
    return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


# -- loading for the daemon ------------------------------------------------------------------
def run_topo_matrix(timeout_s: float = 10.0) -> str:
    """`nvidia-smi topo -m` output, through the actuators' runner (no shell; at the timeout its
    process group is killed and the wait for its pipes is bounded; output capped; bytes that are
    not UTF-8 replaced, for the parser to name). Raises RuntimeError. Called before any event loop
    runs (the daemon's start, the CLI)."""
    import asyncio

    from actuators.proc import ToolError, run

    try:
        r = asyncio.run(run(["nvidia-smi", "topo", "-m"], timeout_s))
    except ToolError as e:
        raise RuntimeError(str(e)) from None
    if r.rc != 0:
        raise RuntimeError(f"nvidia-smi topo -m: {r.status}: {r.text.strip()[:200]}")
    return r.stdout


def load_topology(
    source: str = "auto",
    sys_root: str = "/sys",
    topo_matrix_file: str | None = None,
    runner: Callable[[], str] = run_topo_matrix,
) -> Topology:
    """The topology a config asks for (`[topology] source`): sysfs, a captured or live
    `nvidia-smi topo -m` (the file may be an NCCL topology XML instead), or nothing. "auto": sysfs
    when it shows GPUs, else the matrix file, else a live `nvidia-smi topo -m`, else what sysfs
    showed. Raises ParseError / OSError / RuntimeError when an explicitly requested source fails."""
    from fsm.topology import empty_topology

    if source == "none":
        return empty_topology()
    sysfs_topo = empty_topology()
    if source in ("auto", "sysfs"):
        sysfs_topo = discover_sysfs(sys_root)
        if sysfs_topo.gpus or source == "sysfs":
            return sysfs_topo
    if topo_matrix_file:
        from controller.topology_nccl import looks_like_xml, parse_nccl_topo_xml  # imports this module

        text = read_small_text(topo_matrix_file, errors="replace")
        if looks_like_xml(text):  # an NCCL topology XML (NCCL_TOPO_FILE) in place of the matrix
            return parse_nccl_topo_xml(text, topo_matrix_file)
        return topology_from_matrix(parse_topo_matrix(text, topo_matrix_file))
    try:
        return topology_from_matrix(parse_topo_matrix(runner(), "nvidia-smi topo -m"))
    except (OSError, RuntimeError, ParseError):
        if source == "topo-matrix":
            raise
        return sysfs_topo  # no GPUs anywhere: still show the NICs and drives sysfs knows


# -- rendering and exports -------------------------------------------------------------------
def _fmt_bps(v: float | None) -> str:
    return "" if v is None else f" {v / 1e9:.1f} GB/s"


def render_tree(topo: Topology) -> str:
    """The tree, one node per line, then each GPU's neighbours by tier."""
    lines: list[str] = []

    def walk(nid: str, depth: int) -> None:
        n = topo.node(nid)
        bits = [n.kind.value]
        if n.bdf and n.bdf != n.id:
            bits.append(n.bdf)
        if n.model:
            bits.append(n.model)
        if n.numa is not None:
            bits.append(f"numa {n.numa}")
        if n.cpus:
            bits.append(f"cpus {format_cpulist(n.cpus)}")
        aliases = [a for a in n.aliases if a != n.bdf]
        if aliases:
            bits.append("aka " + ",".join(aliases))
        lines.append(f"{'  ' * depth}{n.id} ({'; '.join(bits)}){_fmt_bps(n.link_bps)}")
        for c in sorted(topo.children(nid), key=lambda c: (c.kind != NodeKind.GPU, c.id)):
            walk(c.id, depth + 1)

    walk(HOST_ID, 0)
    gpus = topo.gpus
    if gpus:
        lines.append("")
        lines.append("GPU neighbours (PCIe distance; NVLink is not PCIe):")
        for g in gpus:
            parts = []
            for tier in (Tier.SWITCH, Tier.ROOT_COMPLEX, Tier.NUMA):
                near = [n.id for n in topo.devices_near(g.id, tier) if topo.distance(g.id, n.id) == tier]
                if near:
                    parts.append(f"{tier.name.lower()}: {', '.join(near)}")
            numa = topo.numa_of(g.id)
            head = f"  {g.id} (numa {numa if numa is not None else '?'})"
            lines.append(head + (" -> " + "; ".join(parts) if parts else " -> nothing nearer than the system"))
    return "\n".join(lines) + "\n"


def topology_json(topo: Topology) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "id": n.id,
                "kind": n.kind.value,
                "parent": n.parent,
                "bdf": n.bdf,
                "numa": n.numa,
                "cpus": format_cpulist(n.cpus) if n.cpus else None,
                "model": n.model,
                "link_bps": n.link_bps,
                "aliases": list(n.aliases),
            }
            for n in topo.nodes
        ]
    }


LABEL_PREFIX = "tailguard.io/"
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def _label_value(v: str) -> str:
    """A valid Kubernetes label value: <= 63 chars of [A-Za-z0-9_.-], alphanumeric at both ends."""
    s = _LABEL_VALUE_BAD.sub("-", v)[:63]
    return s.strip("-_.")


def node_labels(topo: Topology, tiers: Iterable[str] = ()) -> dict[str, str]:
    """Kubernetes node labels describing the host's PCIe/NUMA layout, so a scheduler can use the
    same notion of distance: per GPU its NUMA node, switch and root complex, and the NICs nearest
    to it. `tiers` (leaf switch first) become Volcano's label-discovery labels
    (`volcano.sh/hypernode`, `volcano.sh/hypercluster`)."""
    labels: dict[str, str] = {}
    gpus = topo.gpus
    labels[LABEL_PREFIX + "gpu-count"] = str(len(gpus))
    labels[LABEL_PREFIX + "numa-count"] = str(sum(1 for n in topo.of_kind(NodeKind.NUMA) if n.numa is not None))
    per_switch: dict[str, int] = {}
    for g in gpus:
        key = LABEL_PREFIX + g.id
        numa = topo.numa_of(g.id)
        if numa is not None:
            labels[key + ".numa"] = str(numa)
        sw = topo.enclosing(g.id, NodeKind.SWITCH)
        if sw is not None:
            top = sw
            for nid in topo.ancestors(g.id):
                if topo.node(nid).kind == NodeKind.SWITCH:
                    top = nid
            labels[key + ".switch"] = _label_value(top)
            per_switch[top] = per_switch.get(top, 0) + 1
        rc = topo.enclosing(g.id, NodeKind.ROOT_COMPLEX)
        if rc is not None:
            labels[key + ".root-complex"] = _label_value(rc)
        nics = [(topo.distance(g.id, n.id), n.id) for n in topo.of_kind(NodeKind.NIC)]
        known = [(d, n) for d, n in nics if d is not None and d < Tier.SYSTEM]
        if known:
            best = min(d for d, _ in known)
            labels[key + ".nics"] = _label_value(".".join(sorted(n for d, n in known if d == best)))
    if per_switch:
        labels[LABEL_PREFIX + "gpus-per-switch"] = str(max(per_switch.values()))
    names = ("volcano.sh/hypernode", "volcano.sh/hypercluster")
    for key, name in zip(names, tiers, strict=False):
        labels[key] = _label_value(name)
    return labels


def hypernode_manifests(node_name: str, tiers: list[str]) -> list[dict[str, Any]]:
    """Volcano HyperNode manifests (topology.volcano.sh/v1alpha1): tier 1 holds this node, each
    higher tier holds the one below, as in Volcano's network-topology-aware scheduling docs (seed
    001_*). A host cannot see its cluster switches, so their names come from the operator."""
    if not tiers:
        raise ValueError("name the switches above this node, leaf first: --tier LEAF [--tier SPINE ...]")
    out = []
    for i, name in enumerate(tiers):
        if i == 0:
            member = {"type": "Node", "selector": {"exactMatch": {"name": node_name}}}
        else:
            member = {"type": "HyperNode", "selector": {"exactMatch": {"name": tiers[i - 1]}}}
        out.append(
            {
                "apiVersion": "topology.volcano.sh/v1alpha1",
                "kind": "HyperNode",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "tailguard"}},
                "spec": {"tier": i + 1, "members": [member]},
            }
        )
    return out


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Minimal YAML for dicts/lists/str/int/None (what the exports contain); strings are quoted
    with JSON rules, which YAML accepts."""
    import json

    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        out = []
        for k, v in obj.items():
            key = str(k) if _PLAIN_KEY.match(str(k)) else json.dumps(str(k))
            if isinstance(v, dict | list) and v:
                out.append(f"{pad}{key}:\n{to_yaml(v, indent + 1)}")
            else:
                out.append(f"{pad}{key}: {to_yaml(v)}")
        return "\n".join(out)
    if isinstance(obj, list):
        if not obj:
            return "[]"
        out = []
        for v in obj:
            if isinstance(v, dict | list) and v:
                body = to_yaml(v, indent + 1).lstrip()
                out.append(f"{pad}- {body}")
            else:
                out.append(f"{pad}- {to_yaml(v)}")
        return "\n".join(out)
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int | float):
        return str(obj)
    return json.dumps(str(obj))
