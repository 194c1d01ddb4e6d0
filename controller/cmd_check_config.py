"""`tailguard check-config FILE`: exit 0 when valid, 2 with every problem listed when not."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controller.config import ConfigError, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("file", help="TOML config file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{e.file}: {problem}", file=sys.stderr)
        print(f"{e.file}: {len(e.problems)} problem(s)", file=sys.stderr)
        return 2
    n_sens = sum(1 for t in cfg.tenants if t.role == "sensitive")
    print(
        f"{args.file}: OK (host {cfg.host.name}, mode {cfg.host.mode}, {len(cfg.tenants)} tenants, "
        f"{n_sens} sensitive, {len(cfg.gpus)} GPUs)"
    )
    from controller.platform import notes

    for n in notes(cfg):
        print(f"{args.file}: note: {n}")
    return 0
