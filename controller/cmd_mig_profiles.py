"""`tailguard mig-profiles [--gpu N] [--json] [--config FILE]`: the MIG profile table in force on each
GPU and where it came from (the driver's `nvidia-smi mig -lgip/-lgipp`, or the built-in table);
`--model KEY` prints a built-in table without a driver."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from controller.mig_tables import GpuTable, MigTables

EXIT_OK, EXIT_BUILTIN, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mig-profiles",
        help="show the MIG profile table in force per GPU and where it came from (driver / built-in)",
        description=(
            "Reads `nvidia-smi mig -lgip` and `-lgipp` per GPU, as the daemon does at start, and prints the table "
            "in force with its differences from the built-in one (the driver's wins). Exit 0 when every GPU's "
            "listing was read, 1 when a GPU fell back to its built-in table, 2 on a usage error or no GPU."
        ),
    )
    p.add_argument("--gpu", type=int, metavar="N", help="only the GPU with this index")
    p.add_argument("--config", metavar="FILE", help="the GPUs and models of this config's [[gpus]]")
    p.add_argument("--model", metavar="KEY", help="print the built-in table of a GPU model (no driver needed)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--nvidia-smi", default="nvidia-smi", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"tailguard mig-profiles: {msg}", file=sys.stderr)
    return EXIT_USAGE


def render(t: GpuTable) -> str:
    m = t.model
    head = f"{t.gpu} (index {t.index}): {m.name if m else 'unknown model'}"
    if t.driver:
        head += f", driver {t.driver}"
    if t.source == "driver":
        head += ": the driver's table" + (
            f" (differs from the built-in one in {len(t.differences)} point(s); the driver's is used)"
            if t.differences else " (same as the built-in one)"
        )  # fmt: skip
    elif t.source == "built-in":
        head += ": the built-in table" + (f" ({t.error})" if t.error else "")
    else:
        head += f": no table ({t.error}; set [[gpus]] model)"
    lines = [head]
    if m is not None:
        # The GPU's geometry: 8 memory slots and 7 compute slices on A100/H100/H200, 12 and 4 on RTX
        # PRO 6000 Blackwell; a profile's slices and slots below count in these.
        lines.append(f"  {m.mem_slots} memory slots, {m.compute_slices} compute slices")
        w = max([13] + [len(p.name) + 1 for p in m.profiles])  # 1g.24gb+me.all: 14
        lines.append(f"  {'profile':<{w}}{'ID':>3}  {'slices':>6} {'slots':>5} {'max':>3}  {'placements':<18}"
                     f"{'GiB':>7} {'SM':>4}  DEC/ENC/JPG/OFA/CE")  # fmt: skip
        for p in m.profiles:
            pl = "{" + ",".join(str(s) for s in p.placements) + f"}}:{p.mem_slots}"
            lines.append(
                f"  {p.name:<{w}}{p.lgip_id:>3}  {p.slices:>6} {p.mem_slots:>5} {p.cls.max_count:>3}  {pl:<18}"
                f"{p.gib:>7.2f} {p.sm:>4}  {p.dec}/{p.enc}/{p.jpg}/{p.ofa}/{p.ce}"
            )
    if t.differences:
        lines.append("  differences from the built-in table:")
        lines += [f"    {d}" for d in t.differences]
    lines += [f"  note: {n}" for n in t.notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import logging

    from actuators.nvsmi import NvidiaSmi
    from fsm.mig import model_by_name

    logging.getLogger("tailguard.mig").setLevel(logging.ERROR)  # the differences are printed below

    if args.model:
        try:
            model = model_by_name(args.model)
        except KeyError as e:
            return _fail(str(e.args[0]))
        t = GpuTable("-", -1, model, model, "built-in")
        print(json.dumps(t.as_json(), indent=2) if args.json else render(t).replace("- (index -1): ", "built-in: "))
        return EXIT_OK
    gpus: dict[str, int] = {}
    models: dict[str, str] = {}
    if args.config:
        from controller.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            return EXIT_USAGE
        gpus = {g.name: g.index for g in cfg.gpus}
        models = {g.name: g.model for g in cfg.gpus if g.model}
    if args.gpu is not None and gpus:
        gpus = {n: i for n, i in gpus.items() if i == args.gpu}
        if not gpus:
            return _fail(f"--gpu {args.gpu}: not in the config's [[gpus]]")
    tables = MigTables(NvidiaSmi(args.nvidia_smi, timeout=10.0), gpus, models)
    asyncio.run(tables.refresh(force=True))
    found = [t for t in tables.tables.values() if args.gpu is None or t.index == args.gpu]
    if not found:
        why = tables.last_error or (f"the driver lists no GPU {args.gpu}" if args.gpu is not None else "no GPUs")
        return _fail(f"{why} (without a driver: --config FILE for the configured GPUs, or --model KEY)")
    if args.json:
        print(json.dumps({"driver": tables.driver, "gpus": [t.as_json() for t in found]}, indent=2))
    else:
        print("\n\n".join(render(t) for t in found))
    return EXIT_BUILTIN if any(t.source != "driver" for t in found) else EXIT_OK
