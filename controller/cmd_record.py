"""`tailguard record --out TRACE`: the daemon, also writing every observation to a trace.

The trace format is replay.trace's (tailguard.trace/2; /1 files still read): line-buffered JSON lines, fsync every few
seconds, rotation by size; `tailguard replay --shadow TRACE` reads it back. Everything else is
`tailguard run` (add --dry-run to only watch).
"""

from __future__ import annotations

import argparse

from controller.cmd_run import add_common, main


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("record", help="run the daemon and record its observations to a trace file")
    p.add_argument("--out", dest="record", required=True, metavar="TRACE", help="trace file to append to")
    p.add_argument("--max-bytes", type=int, default=64 << 20, help="rotate the trace past this size (default 64 MiB)")
    add_common(p)
    p.set_defaults(func=main)
