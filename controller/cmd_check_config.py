"""`tailguard check-config FILE`: exit 0 when valid, 2 with every problem listed when not."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controller.config import ConfigError, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("file", help="TOML config file")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also check the MIG settings against the tables this host's driver lists (nvidia-smi mig -lgip/-lgipp)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.file}: {problem}", file=sys.stderr)
        print(f"{e.file}: {len(e.problems)} problem(s)", file=sys.stderr)
        return 2
    if getattr(args, "probe", False):
        import asyncio
        import logging

        from actuators.nvsmi import NvidiaSmi
        from controller.mig_probe import probe_config
        from controller.mig_tables import MigTables

        logging.getLogger("tailguard.mig").setLevel(logging.ERROR)  # the differences are printed below

        tables = MigTables(NvidiaSmi(timeout=10.0), {g.name: g.index for g in cfg.gpus},
                           {g.name: g.model for g in cfg.gpus if g.model})  # fmt: skip
        problems, warnings = asyncio.run(probe_config(cfg, tables))
        for w in warnings:
            print(f"{args.file}: warning: {w}", file=sys.stderr)
        if problems:
            for problem in problems:
                print(f"{args.file}: {problem}", file=sys.stderr)
            print(f"{args.file}: {len(problems)} problem(s) against the driver's MIG tables", file=sys.stderr)
            return 2
    n_sens = sum(1 for t in cfg.tenants if t.role == "sensitive")
    print(
        f"{args.file}: OK (host {cfg.host.name}, mode {cfg.host.mode}, {len(cfg.tenants)} tenants, "
        f"{n_sens} sensitive, {len(cfg.gpus)} GPUs)"
    )
    return 0
