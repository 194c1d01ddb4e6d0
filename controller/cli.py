"""The `tailguard` command. Each subcommand lives in its own module, which exposes
`register(subparsers)`; this file only wires them together, so that importing the CLI stays
cheap (heavy modules are imported by the subcommand that needs them).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that register subcommands, in the order `tailguard --help` lists them.
SUBCOMMANDS = (
    "controller.cmd_run",
    "replay.cmd_replay",
    "replay.cmd_scenario",
    "controller.cmd_record",
    "controller.cmd_status",
    "controller.cmd_topology",
    "controller.cmd_check_config",
    "controller.cmd_doctor",
    "controller.cmd_mig_profiles",
    "controller.cmd_demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailguard",
        description=(
            "Keep latency-sensitive GPU tenants inside their tail-latency SLO on shared, MIG-partitioned hosts."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # a subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
