"""`tailguard check-config FILE`: every problem `run` would trip on, before it does.

Exit 0: valid (warnings, if any, are printed and do not change the exit code); 2: invalid, with
every problem listed as `FILE: key.path: what is wrong`. The checks are the ones `run` makes at
start and on SIGHUP (controller/config.py `load_checked`): per key, across sections (GPU
references, MIG profiles and placement against the built-in table, shared cgroups, listen
addresses) and on this host's filesystem (files the config names).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controller.config import ConfigError, load_checked


def register(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid; warnings keep 0)")
    p.add_argument("file", help="TOML config file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        checked = load_checked(args.file)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.file}: {problem}", file=sys.stderr)
        for w in e.warnings:
            print(f"{e.file}: {w}", file=sys.stderr)
        print(f"{e.file}: {len(e.problems)} problem(s), {len(e.warnings)} warning(s)", file=sys.stderr)
        return 2
    cfg = checked.config
    for w in checked.warnings:
        print(f"{args.file}: {w}", file=sys.stderr)
    n_sens = sum(1 for t in cfg.tenants if t.role == "sensitive")
    warned = f", {len(checked.warnings)} warning(s)" if checked.warnings else ""
    print(
        f"{args.file}: OK (host {cfg.host.name}, mode {cfg.host.mode}, {len(cfg.tenants)} tenants, "
        f"{n_sens} sensitive, {len(cfg.gpus)} GPUs{warned})"
    )
    from controller.platform import notes

    for n in notes(cfg):
        print(f"{args.file}: note: {n}")
    return 0
