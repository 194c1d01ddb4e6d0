"""`tailguard status`: what the running daemon is doing, from its status file or, with --url, from
its loopback HTTP endpoint (`/status` beside `/metrics`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show what the running daemon is doing (levels, decisions, throttles)")
    p.add_argument("--config", default="/etc/tailguard/tailguard.toml", help="read host.state_dir from this config")
    p.add_argument("--state-dir", help="the daemon's state directory (overrides --config)")
    p.add_argument("--url", help="read http://HOST:PORT/status from the running daemon instead of the file")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from controller.status import DEFAULT_URL, StatusError, fetch_status, read_status, render

    if args.url:
        try:
            data = fetch_status(args.url)
        except StatusError as e:
            print(f"tailguard status: {e}", file=sys.stderr)
            return 1
        print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data))
        return 0
    state_dir = args.state_dir
    url = DEFAULT_URL
    if state_dir is None:
        from controller.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(f"tailguard status: {e}\n(give --state-dir to skip the config)", file=sys.stderr)
            return 2
        state_dir = cfg.host.state_dir
        listen = cfg.exporters.prometheus.listen
        if cfg.exporters.prometheus.enabled and not listen.startswith(("0.0.0.0:", "[::]:")):
            url = f"http://{listen}/status"
    try:
        data = read_status(Path(state_dir) / "status.json", url)
    except StatusError as e:
        print(f"tailguard status: {e}", file=sys.stderr)
        return 1
    from controller.statelock import holder

    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render(data, lock=holder(state_dir)))
    return 0
