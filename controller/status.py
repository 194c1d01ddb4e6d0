"""The daemon's status file (STATE_DIR/status.json) and its rendering for `tailguard status`.

The loop rewrites the file atomically after every tick (temporary file + rename), so a reader
never sees half of it. `state` is "stopped" after a clean exit (written on the way out); otherwise
its age tells whether the daemon is alive: older than a few periods means the loop is stalled or
was killed. `degraded` names what is not working (controller/degraded.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from controller.exporters.snapshot import Snapshot, TenantView
from fsm.codec import encode
from schema.files import read_small_text
from schema.jsontext import loads_json

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
        "state": s.state,
        "stop_reason": s.stop_reason,
        "degraded": {c.name: {"cause": c.cause, "since": c.since, "group": c.group} for c in s.degraded},
        "sources": dict(s.sources),
        "journal": dict(s.journal) if s.journal is not None else None,
        "outages": {
            t: [{"kind": o.kind, "seconds": o.seconds, "wall": o.wall} for o in v] for t, v in sorted(s.outages.items())
        },
    }


DEFAULT_URL = "http://127.0.0.1:9433/status"  # exporters.prometheus.listen's default


def read_status(path: str | Path, url_hint: str = DEFAULT_URL) -> dict[str, Any]:
    p = Path(path)
    try:
        data = loads_json(read_small_text(p))
    except FileNotFoundError:
        raise StatusError(f"{p}: no status file (is the daemon running with this state_dir?)") from None
    except PermissionError as e:
        raise StatusError(
            f"{p}: {e.strerror}: the state dir is the daemon's (mode 0700). Run as root, or ask the running daemon: "
            f"tailguard status --url {url_hint}"
        ) from None
    except OSError as e:
        raise StatusError(f"{p}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StatusError(f"{p}: not a status file: {e}") from None
    return _checked(data, str(p), "file")


# What render() reads, by section: (container, type of each item). A file with the right schema
# tag but another shape (hand-edited, a future daemon's) is refused naming the key, not rendered
# into a traceback.
_SECTIONS: dict[str, tuple[type, type | None]] = {
    "tenants": (dict, dict),
    "degraded": (dict, dict),
    "throttles": (list, dict),
    "in_flight": (list, str),
    "unavailable": (dict, None),
    "outages": (dict, list),
    "recent_events": (list, dict),
    "journal": (dict, None),
}
_NUMBERS = ("wall", "period_s", "status_every_s", "last_tick_s")
_ITEM_NUMBERS = {"throttles": ("expires_at",), "recent_events": ("t",)}  # formatted as numbers


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _shape_problem(data: dict[str, Any]) -> str | None:
    for key in _NUMBERS:
        if not _is_number(data.get(key)):
            return f"{key} is {data[key]!r}, not a number"
    for key, (box, item) in _SECTIONS.items():
        v = data.get(key)
        if v is None:
            continue
        if not isinstance(v, box):
            return f"{key} is a {type(v).__name__}, not a {box.__name__}"
        items: list[Any] = list(data[key].values()) if box is dict else list(data[key])
        if item is not None and (bad := [x for x in items if not isinstance(x, item)]):
            return f"{key} holds {bad[0]!r:.60}, not a {item.__name__}"
        for field in _ITEM_NUMBERS.get(key, ()):
            if any(x.get(field) is None or not _is_number(x[field]) for x in items):
                return f"{key}[].{field} is not a number in every item"
    for tenant, recs in (data.get("outages") or {}).items():
        if not all(isinstance(r, dict) and _is_number(r.get("seconds")) for r in recs):
            return f"outages.{tenant} holds a record that is not {{kind, seconds}}"
    return None


def _checked(data: Any, where: str, noun: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("schema") != STATUS_SCHEMA:
        raise StatusError(f"{where}: not a {STATUS_SCHEMA} {noun}")
    if (why := _shape_problem(data)) is not None:
        raise StatusError(f"{where}: a {STATUS_SCHEMA} {noun} of another shape: {why}")
    return data


def fetch_status(url: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """The status JSON from a running daemon's HTTP endpoint (`--url http://127.0.0.1:9433/status`)."""
    import urllib.error
    import urllib.request

    from controller.config import url_problem

    if not url.startswith(("http://", "https://")):
        raise StatusError(f"{url}: expected an http:// URL")
    why = url_problem(url, ("http", "https"))
    if why:
        raise StatusError(f"{url}: {why}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            body = r.read(8 << 20)
    except ValueError as e:  # http.client.InvalidURL and the like: what url_problem did not foresee
        raise StatusError(f"{url}: not a URL to fetch: {e}") from None
    except urllib.error.HTTPError as e:
        raise StatusError(f"{url}: HTTP {e.code} (is this a tailguard daemon's /status?)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusError(f"{url}: cannot connect: {reason}") from None
    try:
        data = loads_json(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StatusError(f"{url}: not JSON: {e}") from None
    return _checked(data, url, "document")


def _ms(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v * 1000:.1f} ms"


def _bps(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v / 1e6:.0f} MB/s"


def _dur(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def _ago(s: float) -> str:
    return f"{_dur(s)} ago"


def render(data: dict[str, Any], now: float | None = None, lock: tuple[str, int | None] = ("unknown", None)) -> str:
    """`lock`: who holds the daemon's state directory (controller/statelock.holder), which tells a
    killed daemon (nobody) from a stalled one (its pid still does)."""
    now = time.time() if now is None else now
    age = now - float(data.get("wall") or 0)
    period = max(float(data.get("period_s") or 1), float(data.get("status_every_s") or 0))
    held, pid = lock
    by = f" (pid {pid})" if held == "held" and pid is not None else ""
    if data.get("state") == "stopped":
        alive = f"stopped {_ago(age)} ({data.get('stop_reason') or 'clean exit'})"
    elif held == "free":
        alive = f"NOT RUNNING: no process holds its state directory; the last tick was {_ago(age)} (killed?)"
    elif age <= 3 * period + 1:
        alive = ("running" if data.get("state", "running") == "running" else "starting (no good tick yet)") + by
    elif held == "held":
        alive = f"STALE: last tick {age:.0f} s ago, and the daemon{by} still holds its state directory (stalled?)"
    else:
        alive = f"STALE: last tick {age:.0f} s ago (killed or stalled?)"
    lines = [
        f"tailguard on {data.get('host')}: {alive}; mode {data.get('mode')}; tick {data.get('ticks_total')} "
        f"(last {_ms(data.get('last_tick_s'))}, {data.get('overruns_total')} overruns)",
    ]
    degraded = data.get("degraded") or {}
    if degraded:
        lines.append(f"DEGRADED ({len(degraded)}):")
        for name, c in sorted(degraded.items()):
            since = c.get("since")
            age_s = f" (for {_dur(now - since)})" if isinstance(since, int | float) else ""
            lines.append(f"  {name}: {c.get('cause')}{age_s}")
    lines += [
        "",
        f"{'TENANT':<16} {'ROLE':<10} {'LEVEL':<9} {'QUANTILE':>10} {'SLO':>10} {'VIOL/WIN':>9}  LAST REASON",
    ]
    for name, t in sorted((data.get("tenants") or {}).items()):
        win = f"{t.get('violating_windows_total', 0)}/{t.get('windows_total', 0)}" if t.get("slo_s") else "-"
        lines.append(
            f"{name:<16} {t.get('role', '')!s:<10} {t.get('level', '')!s:<9} {_ms(t.get('value_s')):>10} "
            f"{_ms(t.get('slo_s')):>10} {win:>9}  {t.get('last_reason', '') or '-'}"
            + (f" [pending {t['pending']}]" if t.get("pending") else "")
        )
    thr = data.get("throttles") or []
    lines += ["", f"active throttles: {len(thr)}"]
    for th in thr:
        lines.append(
            f"  {th.get('tenant')} on {th.get('device')}: read {_bps(th.get('read_bps'))}, "
            f"write {_bps(th.get('write_bps'))}, protects {th.get('victim') or '-'}, "
            f"expires t={th.get('expires_at'):.0f}"
        )
    inflight = data.get("in_flight") or []
    lines.append(f"in-flight operations: {', '.join(inflight) if inflight else 'none'}")
    unav = data.get("unavailable") or {}
    if unav and not degraded:  # an older daemon's file: no `degraded` section above
        lines.append("unavailable sources:")
        lines += [f"  {k}: {v}" for k, v in sorted(unav.items())]
    outages = data.get("outages") or {}
    if outages:
        lines.append("measured outages (most recent last):")
        for tenant, recs in sorted(outages.items()):
            figs = ", ".join(f"{r.get('kind')} {float(r.get('seconds', 0)):.1f} s" for r in recs[-5:])
            lines.append(f"  {tenant}: {figs}")
    j = data.get("journal")
    if isinstance(j, dict) and (j.get("failing") or j.get("errors_total") or j.get("reopens_total")):
        errs = ", ".join(f"{k} {v}" for k, v in sorted((j.get("errors_total") or {}).items())) or "none"
        lines.append(f"journal: {'FAILING: ' + str(j.get('last_error')) + '; ' if j.get('failing') else ''}"
                     f"write errors {errs}; reopened {j.get('reopens_total', 0)}x; "
                     f"torn lines cut {j.get('torn_repairs_total', 0)}")  # fmt: skip
    events = data.get("recent_events") or []
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
