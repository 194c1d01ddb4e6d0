"""`tailguard doctor [--config FILE] [--json]`: check every real path this host offers, read-only.

One line per check: OK / WARN / FAIL, the cause, the fix. Exit 0 when all are OK, 1 with
warnings, 2 with failures (or a config that does not load)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

DEFAULT_CONFIG = "/etc/tailguard/tailguard.toml"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check NVML, MIG, topology, DCGM, cgroups, latency sources, broker, state dir (exit 0/1/2)",
        description=(
            "A read-only check of every real path the daemon would use: NVML and each GPU's PCIe counters, MIG mode "
            "and the driver's profile listings, nvidia-smi topo -m, DCGM, the cgroup hierarchy and each tenant's "
            "group, each tenant's latency source, the MQTT broker, the state directory, the systemd notify socket. "
            "Exit 0 all OK, 1 warnings, 2 failures. Run it first on a new GPU host."
        ),
    )
    p.add_argument(
        "--config", metavar="FILE", help=f"the config to check against (default {DEFAULT_CONFIG} if present)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per probe (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from controller.config import Config, ConfigError, load_config
    from controller.doctor import DoctorOptions, as_json, exit_code, run_sync

    if not 0 < args.timeout <= 120:
        print("tailguard doctor: --timeout must be between 0 and 120 seconds", file=sys.stderr)
        return 2
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    try:
        cfg = load_config(path) if path else Config()
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        print(f"FAIL config                 {path} does not load -> tailguard check-config {path}", file=sys.stderr)
        return 2
    logging.getLogger("tailguard").setLevel(logging.ERROR)  # the checks say it once, in their lines
    opts = DoctorOptions(timeout_s=args.timeout, nvml=getattr(args, "nvml", None), config_path=path)
    checks, stuck = run_sync(cfg, opts)
    if args.json:
        print(json.dumps({"config": path, **as_json(checks)}, indent=2))
    else:
        print(f"tailguard doctor: {'config ' + path if path else 'no config (defaults)'}")
        for c in checks:
            print(c.line())
        rc = exit_code(checks)
        print({0: "all OK", 1: "warnings (see WARN lines)", 2: "failures (see FAIL lines)"}[rc])
    if stuck:  # a driver call hung in a thread that cannot be stopped: leave without waiting for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code(checks))
    return exit_code(checks)
