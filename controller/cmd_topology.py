"""`tailguard topology`: the PCIe/NUMA tree and each GPU's neighbours; `--topo-matrix FILE --json`
for a captured `nvidia-smi topo -m` or an NCCL topology XML (told apart by content); `--nccl-xml
FILE` for the XML only; `--export node-labels|hypernode` for cluster schedulers."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from controller.signals.base import ParseError
from schema.files import read_small_text


def register(sub: Any) -> None:
    p = sub.add_parser(
        "topology",
        help="show the PCIe/NUMA topology and GPU neighbours; parse nvidia-smi topo -m; export labels",
        description=(
            "Without options: discover the PCIe tree from sysfs (falling back to `nvidia-smi topo -m`) and print "
            "it with each GPU's neighbours. --topo-matrix parses a captured `nvidia-smi topo -m` (or an NCCL "
            "topology XML, recognised by its leading '<') instead; --nccl-xml parses an NCCL topology XML."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--topo-matrix", metavar="FILE", help="parse a captured `nvidia-smi topo -m` output (or an NCCL topology XML)"
    )
    src.add_argument("--nccl-xml", metavar="FILE", help="parse an NCCL topology XML (NCCL_TOPO_FILE format)")
    p.add_argument("--sys-root", default=None, help="sysfs root to discover from (default /sys)")
    p.add_argument(
        "--config", metavar="FILE", help="use the config's [topology] source and [signals] sys_root, as the daemon does"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the readable tree")
    p.add_argument("--export", choices=("node-labels", "hypernode"), help="print scheduler input instead")
    p.add_argument("--node-name", default=None, help="Kubernetes node name for --export (default: hostname)")
    p.add_argument(
        "--tier",
        action="append",
        default=[],
        metavar="NAME",
        help="name of a network switch above this node, leaf first (repeat for higher tiers); for --export",
    )
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"tailguard topology: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from controller.topology import (
        TopoMatrix,
        hypernode_manifests,
        load_topology,
        node_labels,
        parse_topo_matrix,
        render_tree,
        to_yaml,
        topology_from_matrix,
        topology_json,
    )
    from controller.topology_nccl import looks_like_xml, parse_nccl_topo_xml

    matrix: TopoMatrix | None = None
    path = args.topo_matrix or args.nccl_xml
    try:
        if path:
            try:
                text = read_small_text(path, errors="replace")
            except OSError as e:
                return _fail(f"{path}: cannot read: {e.strerror or e}")
            if args.nccl_xml or looks_like_xml(text):
                topo = parse_nccl_topo_xml(text, path)  # --json prints its nodes: there is no matrix
            else:
                matrix = parse_topo_matrix(text, path)
                if args.json and not args.export:
                    print(json.dumps(matrix.to_json(), indent=2))
                    return 0
                topo = topology_from_matrix(matrix)
        elif args.config:
            from controller.config import ConfigError, load_config

            try:
                cfg = load_config(args.config)
            except ConfigError as e:
                return _fail(str(e))
            topo = load_topology(
                cfg.topology.source, args.sys_root or cfg.signals.sys_root, cfg.topology.topo_matrix_file
            )
        else:
            topo = load_topology("auto", args.sys_root or "/sys")
    except ParseError as e:
        return _fail(str(e))
    except (OSError, RuntimeError) as e:
        return _fail(str(e))
    if args.export == "node-labels":
        labels = node_labels(topo, args.tier)
        print(json.dumps(labels, indent=2) if args.json else to_yaml(labels))
        return 0
    if args.export == "hypernode":
        node = args.node_name or socket.gethostname()
        try:
            docs = hypernode_manifests(node, args.tier)
        except ValueError as e:
            return _fail(str(e))
        if args.json:
            print(json.dumps(docs, indent=2))
        else:
            print("\n---\n".join(to_yaml(d) for d in docs))
        return 0
    if args.json:
        print(json.dumps(topology_json(topo), indent=2))
        return 0
    if not topo.gpus:
        print("no GPUs found (no NVIDIA PCI devices in sysfs, and `nvidia-smi topo -m` not available)", file=sys.stderr)
    sys.stdout.write(render_tree(topo))
    if matrix is not None:
        nv = _nvlink_lines(matrix)
        if nv:
            sys.stdout.write("\nNVLink (from the matrix):\n" + "".join(nv))
    return 0


def _nvlink_lines(matrix: Any) -> list[str]:
    out = []
    for row in matrix.gpus:
        peers = [f"{c} ({rel})" for c, rel in matrix.links[row].items() if rel.startswith("NV")]
        if peers:
            out.append(f"  {row}: {', '.join(peers)}\n")
    return out
