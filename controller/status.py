"""The daemon's status file (STATE_DIR/status.json) and its rendering for `tailguard status`.

The loop rewrites the file atomically after every tick (temporary file + rename), so a reader
never sees half of it. Its age tells whether the daemon is alive: older than a few periods means
the loop is stalled or stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from controller.exporters.snapshot import Snapshot, TenantView
from fsm.codec import encode

STATUS_SCHEMA = "tailguard.status/1"


class StatusError(Exception):
    """A status file that cannot be read; the message names the file."""


_TENANT_FIELDS = tuple(f.name for f in fields(TenantView))


def status_json(s: Snapshot, status_every_s: float = 0.0) -> dict[str, Any]:
    return {
        "schema": STATUS_SCHEMA,
        "host": s.host,
        "wall": s.wall,
        "t": s.t,
        "period_s": s.period_s,
        "started_wall": s.started_wall,
        "ready": s.ready,
        "mode": "paused" if s.paused else ("enforce" if s.enforcing else "dry-run"),
        "ticks_total": s.ticks_total,
        "overruns_total": s.overruns_total,
        "tick_errors_total": s.tick_errors_total,
        "last_tick_s": s.last_tick_s,
        "status_every_s": status_every_s,
        "tenants": {n: {f: getattr(v, f) for f in _TENANT_FIELDS} for n, v in s.tenants.items()},
        "throttles": [encode(t) for t in s.throttles],
        "in_flight": list(s.in_flight),
        "unavailable": dict(s.unavailable),
        "recent_events": [dict(e) for e in s.recent_events],
        "reconfigs_total": s.reconfigs_total,
        "reloads": dict(s.reloads),
        "last_reload_error": s.last_reload_error,
    }


def read_status(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StatusError(f"{p}: no status file (is the daemon running with this state_dir?)") from None
    except OSError as e:
        raise StatusError(f"{p}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StatusError(f"{p}: not a status file: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != STATUS_SCHEMA:
        raise StatusError(f"{p}: not a {STATUS_SCHEMA} file")
    return data


def fetch_status(url: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """The status JSON from a running daemon's HTTP endpoint (`--url http://127.0.0.1:9433/status`)."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise StatusError(f"{url}: expected an http:// URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            body = r.read(8 << 20)
    except urllib.error.HTTPError as e:
        raise StatusError(f"{url}: HTTP {e.code} (is this a tailguard daemon's /status?)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusError(f"{url}: cannot connect: {reason}") from None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StatusError(f"{url}: not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != STATUS_SCHEMA:
        raise StatusError(f"{url}: not a {STATUS_SCHEMA} document")
    return data


def _ms(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v * 1000:.1f} ms"


def _bps(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v / 1e6:.0f} MB/s"


def render(data: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    age = now - float(data.get("wall") or 0)
    period = max(float(data.get("period_s") or 1), float(data.get("status_every_s") or 0))
    alive = "running" if age <= 3 * period + 1 else f"STALE: last tick {age:.0f} s ago (stopped or stalled?)"
    lines = [
        f"tailguard on {data.get('host')}: {alive}; mode {data.get('mode')}; tick {data.get('ticks_total')} "
        f"(last {_ms(data.get('last_tick_s'))}, {data.get('overruns_total')} overruns)",
        "",
        f"{'TENANT':<16} {'ROLE':<10} {'LEVEL':<9} {'QUANTILE':>10} {'SLO':>10} {'VIOL/WIN':>9}  LAST REASON",
    ]
    for name, t in sorted(data.get("tenants", {}).items()):
        win = f"{t.get('violating_windows_total', 0)}/{t.get('windows_total', 0)}" if t.get("slo_s") else "-"
        lines.append(
            f"{name:<16} {t.get('role', ''):<10} {t.get('level', ''):<9} {_ms(t.get('value_s')):>10} "
            f"{_ms(t.get('slo_s')):>10} {win:>9}  {t.get('last_reason', '') or '-'}"
            + (f" [pending {t['pending']}]" if t.get("pending") else "")
        )
    thr = data.get("throttles", [])
    lines += ["", f"active throttles: {len(thr)}"]
    for th in thr:
        lines.append(
            f"  {th.get('tenant')} on {th.get('device')}: read {_bps(th.get('read_bps'))}, "
            f"write {_bps(th.get('write_bps'))}, protects {th.get('victim') or '-'}, "
            f"expires t={th.get('expires_at'):.0f}"
        )
    inflight = data.get("in_flight", [])
    lines.append(f"in-flight operations: {', '.join(inflight) if inflight else 'none'}")
    unav = data.get("unavailable", {})
    if unav:
        lines.append("unavailable sources:")
        lines += [f"  {k}: {v}" for k, v in sorted(unav.items())]
    events = data.get("recent_events", [])
    if events:
        e = events[-1]
        lines += [
            "",
            f"last decision: t={e.get('t', 0):.0f} {e.get('tenant')} {e.get('kind')} "
            f"{e.get('level_from')}->{e.get('level_to')} {e.get('lever', '')}: {e.get('reason', '')}",
        ]
    if data.get("last_reload_error"):
        lines += ["", f"last reload FAILED (running config kept): {data['last_reload_error']}"]
    return "\n".join(lines)
