"""`tailguard check-config FILE [--probe]`: every problem `run` would trip on, before it does.

Exit 0: valid (warnings, if any, are printed and do not change the exit code); 2: invalid, with
every problem listed as `FILE: key.path: what is wrong`. The checks are the ones `run` makes at
start and on SIGHUP (controller/config.py `load_checked`): per key, across sections (GPU
references, MIG profiles and placement against the built-in table, shared cgroups, listen
addresses) and on this host's filesystem (files the config names). `--probe` first reads this
host's driver tables (`nvidia-smi mig -lgip/-lgipp`, as `run` does) and judges the MIG settings
by them where they were read: the driver wins (controller/mig_probe.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controller.config import ConfigError, load_checked, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid; warnings keep 0)")
    p.add_argument("file", help="TOML config file")
    p.add_argument(
        "--probe",
        action="store_true",
        help="judge the MIG settings by the tables this host's driver lists (nvidia-smi mig -lgip/-lgipp), as run does",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tables = None
    try:
        if getattr(args, "probe", False):
            import logging

            from controller.mig_tables import read_for_config

            logging.getLogger("tailguard.mig").setLevel(logging.ERROR)  # the differences are printed below
            tables = read_for_config(load_config(args.file))
        checked = load_checked(args.file, tables.driver_model if tables is not None else None)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.file}: {problem}", file=sys.stderr)
        for w in e.warnings:
            print(f"{e.file}: {w}", file=sys.stderr)
        print(f"{e.file}: {len(e.problems)} problem(s), {len(e.warnings)} warning(s)", file=sys.stderr)
        return 2
    cfg = checked.config
    warnings = list(checked.warnings)
    if tables is not None:
        from controller.mig_probe import driver_problems

        problems, more = driver_problems(cfg, tables)
        warnings += more
        if problems:
            for line in problems + warnings:
                print(f"{args.file}: {line}", file=sys.stderr)
            print(f"{args.file}: {len(problems)} problem(s), {len(warnings)} warning(s)", file=sys.stderr)
            return 2
    for w in warnings:
        print(f"{args.file}: {w}", file=sys.stderr)
    n_sens = sum(1 for t in cfg.tenants if t.role == "sensitive")
    warned = f", {len(warnings)} warning(s)" if warnings else ""
    print(
        f"{args.file}: OK (host {cfg.host.name}, mode {cfg.host.mode}, {len(cfg.tenants)} tenants, "
        f"{n_sens} sensitive, {len(cfg.gpus)} GPUs{warned})"
    )
    from controller.platform import notes

    for n in notes(cfg):
        print(f"{args.file}: note: {n}")
    return 0
