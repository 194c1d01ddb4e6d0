"""Fake sysfs trees with the kernel's layout: real directories under devices/pciDDDD:BB/...,
symlinks in bus/pci/devices, block, class/net and class/infiniband pointing into them, and the
attribute files discovery reads (vendor, class, device, numa_node, local_cpulist,
current_link_speed/width, block dev, node cpulist).

Two layouts mirror the fixture captures:
* p4d.24xlarge: AWS's NCCL topology (nccl-topo_aws-p4d.24xlarge_aws-ofi-nccl.xml) puts 2 GPUs and
  one EFA NIC per group, 2 groups per socket, at the bus ids below; the topo -m capture gives the
  NUMA/CPU affinity (0-23,48-71 / 24-47,72-95). Inside the VM each group sits on its own PCI host
  bridge (the XML's switch is the AWS-supplied virtual one).
* DGX A100: the topo -m capture: GPU pairs with two mlx5 NICs under one PCIe switch tree (PXB),
  NUMA 3/1/7/5, two dual-port storage NICs (PIX) on other NUMA nodes. Bus ids follow the DGX A100
  user guide's GPU order (07, 0f, 47, 4e, 87, 90, b7, bd); NVMe data drives sit in the GPU switch
  trees. Bridge bus numbers are illustrative; the parent/child structure is what is tested.
"""

from __future__ import annotations

import os
from pathlib import Path


class FakeSysfs:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "devices").mkdir(parents=True, exist_ok=True)
        (root / "bus" / "pci" / "devices").mkdir(parents=True, exist_ok=True)
        (root / "block").mkdir(exist_ok=True)
        (root / "class" / "net").mkdir(parents=True, exist_ok=True)
        (root / "class" / "infiniband").mkdir(parents=True, exist_ok=True)

    def numa(self, node: int, cpulist: str) -> FakeSysfs:
        d = self.root / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpulist").write_text(cpulist + "\n")
        return self

    def pci(
        self,
        chain: list[str],
        cls: str = "0x060400",
        vendor: str = "0x10b5",
        device: str = "0x8725",
        numa: int = -1,
        cpulist: str = "",
        speed: str = "16.0 GT/s PCIe",
        width: str = "16",
    ) -> Path:
        """chain = ['pci0000:00', '0000:00:01.1', ..., bdf]; creates the last device."""
        d = self.root / "devices" / Path(*chain)
        d.mkdir(parents=True, exist_ok=True)
        for name, val in (
            ("class", cls),
            ("vendor", vendor),
            ("device", device),
            ("numa_node", str(numa)),
            ("local_cpulist", cpulist),
            ("current_link_speed", speed),
            ("current_link_width", width),
        ):
            (d / name).write_text(val + "\n")
        link = self.root / "bus" / "pci" / "devices" / chain[-1]
        if not link.exists():
            link.symlink_to(os.path.relpath(d, link.parent))
        return d

    def bridges(self, chain: list[str], numa: int = -1, cpulist: str = "") -> None:
        for i in range(2, len(chain) + 1):
            if not (self.root / "devices" / Path(*chain[:i])).exists():
                self.pci(chain[:i], numa=numa, cpulist=cpulist)

    def gpu(self, chain: list[str], device: str = "0x20b0", numa: int = -1, cpulist: str = "") -> None:
        self.bridges(chain[:-1], numa, cpulist)
        self.pci(chain, cls="0x030200", vendor="0x10de", device=device, numa=numa, cpulist=cpulist)

    def nvswitch(self, chain: list[str], numa: int = -1) -> None:
        self.bridges(chain[:-1], numa)
        self.pci(chain, cls="0x068000", vendor="0x10de", device="0x1af1", numa=numa)

    def nvme(self, chain: list[str], ctrl: str, namespaces: dict[str, str], numa: int = -1) -> None:
        self.bridges(chain[:-1], numa)
        d = self.pci(
            chain, cls="0x010802", vendor="0x144d", device="0xa808", numa=numa, speed="8.0 GT/s PCIe", width="4"
        )
        for ns, majmin in namespaces.items():
            nd = d / "nvme" / ctrl / ns
            nd.mkdir(parents=True, exist_ok=True)
            (nd / "dev").write_text(majmin + "\n")
            (self.root / "block" / ns).symlink_to(os.path.relpath(nd, self.root / "block"))

    def nic(
        self, chain: list[str], net: str | None = None, ib: str | None = None, numa: int = -1, vendor: str = "0x15b3"
    ) -> None:
        self.bridges(chain[:-1], numa)
        d = self.pci(chain, cls="0x020700" if ib else "0x020000", vendor=vendor, device="0x101b", numa=numa)
        if net:
            nd = d / "net" / net
            nd.mkdir(parents=True, exist_ok=True)
            (self.root / "class" / "net" / net).symlink_to(os.path.relpath(nd, self.root / "class" / "net"))
        if ib:
            nd = d / "infiniband" / ib
            nd.mkdir(parents=True, exist_ok=True)
            (self.root / "class" / "infiniband" / ib).symlink_to(
                os.path.relpath(nd, self.root / "class" / "infiniband")
            )

    def virtual_net(self, name: str) -> None:
        nd = self.root / "devices" / "virtual" / "net" / name
        nd.mkdir(parents=True, exist_ok=True)
        (self.root / "class" / "net" / name).symlink_to(os.path.relpath(nd, self.root / "class" / "net"))


P4D_CPUS = {0: "0-23,48-71", 1: "24-47,72-95"}


def build_p4d(root: Path) -> FakeSysfs:
    fs = FakeSysfs(root)
    for n, cl in P4D_CPUS.items():
        fs.numa(n, cl)
    groups = [("10", 0), ("20", 0), ("90", 1), ("a0", 1)]
    for k, (bus, numa) in enumerate(groups):
        hb = f"pci0000:{bus}"
        for dev in ("1c", "1d"):
            fs.gpu([hb, f"0000:{bus}:{dev}.0"], device="0x20b0", numa=numa, cpulist=P4D_CPUS[numa])
        # EFA: an RDMA device (vendor Amazon 0x1d0f) with its netdev
        fs.nic([hb, f"0000:{bus}:1b.0"], net=f"eth{k + 1}", ib=f"rdmap{int(bus, 16)}s27", numa=numa, vendor="0x1d0f")
    # ENA primary interface and the EBS root volume on the root bus, instance-store NVMe on socket 1
    fs.nic(["pci0000:00", "0000:00:05.0"], net="eth0", numa=0, vendor="0x1d0f")
    fs.nvme(["pci0000:00", "0000:00:04.0"], "nvme0", {"nvme0n1": "259:0"}, numa=0)
    for i, bus in enumerate(("b0", "b1")):
        fs.nvme([f"pci0000:{bus}", f"0000:{bus}:1e.0"], f"nvme{i + 1}", {f"nvme{i + 1}n1": f"259:{i + 1}"}, numa=1)
    fs.virtual_net("lo")
    return fs


DGX_NUMA_CPUS = {
    0: "0-15,128-143",
    1: "16-31,144-159",
    2: "32-47,160-175",
    3: "48-63,176-191",
    4: "64-79,192-207",
    5: "80-95,208-223",
    6: "96-111,224-239",
    7: "112-127,240-255",
}
# (host bridge bus, NUMA, GPU bus ids, NIC bus ids + names, NVMe) per GPU pair, in topo -m order
DGX_PAIRS = [
    ("00", 3, ("07", "0f"), (("0c", "mlx5_0", "ibp12s0"), ("12", "mlx5_1", "ibp18s0")), ("08", "nvme2", "nvme2n1")),
    ("40", 1, ("47", "4e"), (("4b", "mlx5_2", "ibp75s0"), ("54", "mlx5_3", "ibp84s0")), ("48", "nvme3", "nvme3n1")),
    ("80", 7, ("87", "90"), (("8d", "mlx5_6", "ibp141s0"), ("94", "mlx5_7", "ibp148s0")), ("88", "nvme4", "nvme4n1")),
    ("b0", 5, ("b7", "bd"), (("ba", "mlx5_8", "ibp186s0"), ("cc", "mlx5_9", "ibp204s0")), ("b8", "nvme5", "nvme5n1")),
]


def build_dgx_a100(root: Path) -> FakeSysfs:
    fs = FakeSysfs(root)
    for n, cl in DGX_NUMA_CPUS.items():
        fs.numa(n, cl)
    for majmin, (hb_bus, numa, gpus, nics, (nv_bus, ctrl, ns)) in enumerate(DGX_PAIRS):
        hb = f"pci0000:{hb_bus}"
        rp = f"0000:{hb_bus}:01.1"
        b = int(hb_bus, 16)
        usp = f"0000:{b + 1:02x}:00.0"  # PEX switch upstream port
        cpus = DGX_NUMA_CPUS[numa]
        # level-1 downstream ports, each to a level-2 switch (one per GPU), GPU + NIC under it
        for k, (gbus, (nbus, mlx, net)) in enumerate(zip(gpus, nics, strict=True)):
            dsp1 = f"0000:{b + 2:02x}:{k * 8:02x}.0"
            off = (0x03, 0x1A)[k]  # bus numbers clear of the endpoints' (07, 0c, 0f, 12, 08 + base)
            usp2 = f"0000:{b + off:02x}:00.0"
            dsp_g = f"0000:{b + off + 1:02x}:00.0"
            dsp_n = f"0000:{b + off + 1:02x}:08.0"
            base = [hb, rp, usp, dsp1, usp2]
            fs.gpu([*base, dsp_g, f"0000:{gbus}:00.0"], device="0x20b0", numa=numa, cpulist=cpus)
            fs.nic([*base, dsp_n, f"0000:{nbus}:00.0"], net=net, ib=mlx, numa=numa)
        dsp_nv = f"0000:{b + 2:02x}:1f.0"
        fs.nvme([hb, rp, usp, dsp_nv, f"0000:{nv_bus}:00.0"], ctrl, {ns: f"259:{majmin}"}, numa=numa)
    # storage / in-band NICs (dual port: two functions of one device, PIX), on NUMA 0 and 6
    for hb_bus, numa, dev, names in (("c0", 6, "e1", ("mlx5_4", "mlx5_5")), ("20", 0, "25", ("mlx5_10", "mlx5_11"))):
        hb = f"pci0000:{hb_bus}"
        rp = f"0000:{hb_bus}:03.1"
        for fn, mlx in enumerate(names):
            fs.nic([hb, rp, f"0000:{dev}:00.{fn}"], net=f"enp{int(dev, 16)}s0f{fn}", ib=mlx, numa=numa)
    # OS drives (M.2) on NUMA 2
    fs.nvme(["pci0000:30", "0000:30:03.2", "0000:32:00.0"], "nvme0", {"nvme0n1": "259:10"}, numa=2)
    fs.nvme(["pci0000:30", "0000:30:03.3", "0000:33:00.0"], "nvme1", {"nvme1n1": "259:11"}, numa=2)
    # NVSwitches are NVIDIA bridges (class 0x0680): not GPUs
    for i, bus in enumerate(("c4", "c5", "c6", "c7", "c8", "c9")):
        fs.nvswitch(["pci0000:c0", f"0000:c0:0{i + 1}.1", f"0000:{bus}:00.0"], numa=6)
    fs.virtual_net("lo")
    fs.virtual_net("docker0")
    return fs
