"""NCCL topology XML (the `NCCL_TOPO_FILE` / `NCCL_TOPO_DUMP_FILE` format, e.g. the static files
aws-ofi-nccl ships per EC2 instance type) -> the same Topology the sysfs and matrix paths build.

What is read:

    <system version="1">
      <cpu numaid="0" affinity="000000ff,ffff0000,00ffffff" [affinity_offset="0"] ...>  NUMA node
        <pci busid="..." class="0x060400" link_speed="8 GT/s" link_width="16">    bridge = switch
          <pci busid="..." class="0x030200" .../>            GPU   (class 0x03xxxx or a <gpu> child)
          <pci busid="..." class="0x020000"><nic><net name="efa0" .../></nic></pci>   NIC (0x02xxxx)
          <pci busid="..." class="0x010802" .../>            NVMe  (0x0108xx)
        </pci>
        <nic><net name="..."/></nic>                         a NIC NCCL could not place on PCI
      </cpu>
    </system>

Every <pci> directly under a <cpu> gets its own root complex: the XML does not say which root
ports share a host bridge, so two trees under one CPU are NODE apart, never PHB. GPUs are gpu<i> in
PCI bus order (the order nvidia-smi and NVML use), not NCCL's `dev`/`rank`. Leaves of other classes
(NVSwitch 0x0680xx, bridges without children, ...) are not devices tailguard tracks: skipped.

The file is operator-supplied, not produced by a tool we run: it is parsed with the standard
library's ElementTree (expat; no external entities are fetched), and a DOCTYPE is refused outright
so no entity expansion happens at all. Errors are ParseErrors naming the file and the line of the
element.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from controller.signals.base import ParseError
from controller.topology import link_bps
from fsm.mig import MODELS
from fsm.topology import HOST_ID, Node, NodeKind, Topology
from schema.jsontext import ascii_digits

MAX_BYTES = 4 << 20  # real files are a few KiB; refuse anything that is clearly not one
# Bridges below one root port: a few switch levels in real hosts. The walk recurses once per
# level, and 4 MiB of <pci> holds tens of thousands: bounded well before Python's stack is.
MAX_PCI_DEPTH = 64
_BUSID = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_CLASS = re.compile(r"^0x[0-9a-fA-F]{6}$")
_MASK_WORD = re.compile(r"^[0-9a-fA-F]{1,8}$")
_INT = re.compile(r"^-?[0-9]{1,6}$")
_HEX_ID = re.compile(r"^0x[0-9a-fA-F]{1,4}$")
# Start tags in document order (what ElementTree.iter() yields), skipping comments, CDATA, PIs.
_TOKEN = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>|<([A-Za-z_][\w:.-]*)", re.S)
# Children that carry NCCL-only detail (links, net ports): allowed, not modelled.
_IGNORED = {"gpu": {"nvlink", "c2c"}, "nic": {"net", "gin", "rma"}}


def looks_like_xml(text: str) -> bool:
    """A matrix starts with a column name or a tab; XML with '<' (a comment, declaration or tag)."""
    return text.lstrip("\ufeff \t\r\n").startswith("<")


@dataclass(slots=True)
class _Leaf:
    kind: NodeKind
    busid: str | None
    parent: str
    link: float | None
    names: list[str] = field(default_factory=list)  # <net name=...> of a NIC
    model: str | None = None


@dataclass(slots=True)
class _Parser:
    source: str
    lines: dict[int, int]  # id(element) -> line of its start tag
    nodes: list[Node] = field(default_factory=list)
    leaves: list[_Leaf] = field(default_factory=list)
    busids: set[str] = field(default_factory=set)
    rc_count: int = 0

    def fail(self, el: ET.Element | None, msg: str) -> ParseError:
        return ParseError(self.source, self.lines.get(id(el)) if el is not None else None, msg)

    def attr(self, el: ET.Element, name: str) -> str:
        v = el.get(name)
        if v is None:
            raise self.fail(el, f"<{el.tag}> has no {name}= attribute")
        return v.strip()

    def cpu(self, el: ET.Element, k: int, numas: set[int]) -> None:
        raw = self.attr(el, "numaid")
        if not _INT.match(raw):
            raise self.fail(el, f"<cpu numaid={raw[:20]!r}>: not a number")
        numa = int(raw)
        if numa in numas:
            raise self.fail(el, f"<cpu numaid={numa}> appears twice")
        numas.add(numa)
        cpus = self.affinity(el)
        if numa >= 0:
            nid = f"numa{numa}"
            self.nodes.append(Node(nid, NodeKind.NUMA, HOST_ID, numa=numa, cpus=cpus))
        else:  # NCCL writes -1 when sysfs knows no NUMA node: a CPU group of unknown index
            nid = f"numa-group{k}"
            self.nodes.append(Node(nid, NodeKind.NUMA, HOST_ID, cpus=cpus))
        for child in el:
            if child.tag == "pci":
                rc = f"rc{self.rc_count}"
                self.rc_count += 1
                self.nodes.append(Node(rc, NodeKind.ROOT_COMPLEX, nid))
                self.pci(child, rc)
            elif child.tag == "nic":
                self.leaves.append(_Leaf(NodeKind.NIC, None, nid, None, self.net_names(child)))
            else:
                raise self.fail(child, f"unexpected <{child.tag}> inside <cpu numaid={raw}>")

    def affinity(self, el: ET.Element) -> tuple[int, ...]:
        """NCCL's cpumask: comma-separated 32-bit hex words, most significant first (sysfs cpumap)."""
        mask = (el.get("affinity") or "").strip()
        if not mask:
            return ()
        off_raw = (el.get("affinity_offset") or "0").strip()
        if not ascii_digits(off_raw) or len(off_raw) > 6:
            raise self.fail(el, f"<cpu affinity_offset={off_raw[:20]!r}>: not a number")
        words = mask.split(",")
        if len(words) > 256 or not all(_MASK_WORD.match(w) for w in words):
            raise self.fail(el, f"<cpu affinity={mask[:40]!r}>: expected hex words like 000000ff,ffff0000")
        cpus: list[int] = []
        for i, w in enumerate(reversed(words)):
            v = int(w, 16)
            cpus.extend(int(off_raw) + 32 * i + b for b in range(32) if v >> b & 1)
        return tuple(cpus)

    def net_names(self, nic: ET.Element) -> list[str]:
        for c in nic:
            if c.tag not in _IGNORED["nic"]:
                raise self.fail(c, f"unexpected <{c.tag}> inside <nic>")
        return [n for c in nic if c.tag == "net" and (n := (c.get("name") or "").strip())]

    def pci(self, el: ET.Element, parent: str, depth: int = 1) -> None:
        busid = self.attr(el, "busid").lower()
        if depth > MAX_PCI_DEPTH:
            raise self.fail(el, f"<pci busid={busid[:20]!r}> nested more than {MAX_PCI_DEPTH} levels deep")
        if not _BUSID.match(busid):
            raise self.fail(el, f"<pci busid={busid[:20]!r}>: expected DDDD:BB:DD.F")
        if busid in self.busids:
            raise self.fail(el, f"<pci busid={busid}> appears twice")
        self.busids.add(busid)
        link = self.link(el, busid)
        subs = [c for c in el if c.tag == "pci"]
        gpu = [c for c in el if c.tag == "gpu"]
        nic = [c for c in el if c.tag == "nic"]
        for c in el:
            if c.tag not in ("pci", "gpu", "nic", "pcilink"):
                raise self.fail(c, f"unexpected <{c.tag}> inside <pci busid={busid}>")
        for g in gpu:
            for c in g:
                if c.tag not in _IGNORED["gpu"]:
                    raise self.fail(c, f"unexpected <{c.tag}> inside <gpu> of {busid}")
        cls = el.get("class")
        if cls is None and not (gpu or nic):
            raise self.fail(el, f"<pci busid={busid}> has no class= attribute (and no <gpu>/<nic> child)")
        cls = (cls or "").strip().lower()
        if cls and not _CLASS.match(cls):
            raise self.fail(el, f"<pci busid={busid} class={cls[:20]!r}>: expected 0x followed by 6 hex digits")
        # A <gpu>/<nic> child decides the kind the way NCCL does; the class code otherwise.
        kind: NodeKind | None
        if gpu and nic:
            raise self.fail(el, f"<pci busid={busid}> has both a <gpu> and a <nic> child")
        if gpu or (not nic and cls.startswith("0x03")):
            kind = NodeKind.GPU
        elif nic or cls.startswith("0x02"):
            kind = NodeKind.NIC
        elif cls.startswith("0x0108"):
            kind = NodeKind.NVME
        else:
            kind = None
        if kind is not None:
            if subs:
                raise self.fail(subs[0], f"<pci> nested inside {kind.value} {busid}: a device cannot be a bridge")
            names = self.net_names(nic[0]) if nic else []
            self.leaves.append(
                _Leaf(kind, busid, parent, link, names, self.model(el) if kind is NodeKind.GPU else None)
            )
            return
        if not subs:
            return  # a bridge with nothing below, or a device class tailguard does not track
        self.nodes.append(Node(busid, NodeKind.SWITCH, parent, link_bps=link, bdf=busid))
        for c in subs:
            self.pci(c, busid, depth + 1)

    def link(self, el: ET.Element, busid: str) -> float | None:
        """bytes/s of the link up to the parent; absent or empty values (NCCL fills those from
        sysfs at run time, 'Unknown' from a VM) leave it unmodelled, garbage is an error."""
        speed = (el.get("link_speed") or "").strip()
        width = (el.get("link_width") or "").strip()
        if not speed or not width or speed.lower().startswith("unknown") or width == "0":
            return None
        bps = link_bps(speed, width)
        if bps is None:
            raise self.fail(el, f"<pci busid={busid}>: cannot read link_speed={speed[:20]!r} link_width={width[:8]!r}")
        return bps

    def model(self, el: ET.Element) -> str | None:
        dev = (el.get("device") or "").strip()
        if not _HEX_ID.match(dev):
            return None
        did = int(dev, 16)
        return next((m.key for m in MODELS.values() if did in m.pci_device_ids), None)


def _start_lines(text: str) -> list[int]:
    out = []
    line, pos = 1, 0
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            line += text.count("\n", pos, m.start())
            pos = m.start()
            out.append(line)
    return out


def parse_nccl_topo_xml(text: str, source: str = "NCCL topology XML") -> Topology:
    """The host topology an NCCL topology XML describes; a ParseError names the file and line."""
    if len(text) > MAX_BYTES:
        raise ParseError(source, None, f"{len(text)} bytes: too large for a topology file")
    if not text.strip():
        raise ParseError(source, None, "empty input")
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.I):
        raise ParseError(source, None, "DOCTYPE / ENTITY declarations are not accepted in a topology file")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        msg = str(e).split(":")[0]  # expat's text without its own "line N, column M" suffix
        raise ParseError(source, line, f"not well-formed XML: {msg}") from None
    elements = list(root.iter())
    starts = _start_lines(text)
    lines = {id(el): n for el, n in zip(elements, starts, strict=False)} if len(starts) == len(elements) else {}
    p = _Parser(source, lines)
    if root.tag != "system":
        raise p.fail(root, f"root element is <{root.tag}>, expected <system> (an NCCL topology file)")
    p.nodes.append(Node(HOST_ID, NodeKind.HOST, None))
    numas: set[int] = set()
    for k, child in enumerate(root):
        if child.tag != "cpu":
            raise p.fail(child, f"unexpected <{child.tag}> inside <system> (expected <cpu>)")
        p.cpu(child, k, numas)
    # Names in PCI bus order, as sysfs discovery does; NICs under a <cpu> (no busid) come last.
    order = sorted(p.leaves, key=lambda x: (x.busid is None, x.busid or ""))
    counters = {NodeKind.GPU: 0, NodeKind.NIC: 0, NodeKind.NVME: 0}
    taken = {n.id for n in p.nodes}
    # A NIC's <net name> that is some device's PCI bus id would take that name, and the bus id
    # would then resolve to the NIC: such a name is not used (the NIC keeps its nicN name).
    busids = {x.busid for x in p.leaves if x.busid} | {n.bdf for n in p.nodes if n.bdf}
    for leaf in order:
        i = counters[leaf.kind]
        counters[leaf.kind] += 1
        default = {NodeKind.GPU: f"gpu{i}", NodeKind.NIC: f"nic{i}", NodeKind.NVME: f"nvme{i}"}[leaf.kind]
        names = [n for n in leaf.names if n not in taken and n not in busids] if leaf.kind is NodeKind.NIC else []
        nid = names[0] if names else default
        if nid in taken:
            raise ParseError(source, None, f"device name {nid!r} is used twice")
        taken.add(nid)
        aliases = [*names[1:], *([default] if names else [])]
        if leaf.kind is NodeKind.GPU:
            aliases.append(f"GPU{i}")  # the matrix's name for the same GPU
        if leaf.busid:
            aliases.append(leaf.busid)
        p.nodes.append(
            Node(
                nid,
                leaf.kind,
                leaf.parent,
                link_bps=leaf.link,
                bdf=leaf.busid,
                model=leaf.model,
                aliases=tuple(aliases),
            )
        )
    if not counters[NodeKind.GPU]:
        raise ParseError(source, None, "no GPU in the file (no <pci> of class 0x03xxxx and no <gpu>)")
    return Topology(tuple(p.nodes))
