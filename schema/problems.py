"""Pydantic validation errors as one line per problem, named by dotted key path.

Shared by the config (controller/config.py) and scenario (replay/scenario.py) loaders, so that an
operator reads the same kind of message for either file: `tenants[0](llm).slo_ms: ... (got -1)`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def key_path(loc: tuple[Any, ...], data: Any) -> str:
    """Dotted key path; a list item shows as tenants[0](NAME) when it has a `name` (or `id`)."""
    out = ""
    cur = data
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(cur, list) and 0 <= part < len(cur):
                cur = cur[part]
                if isinstance(cur, dict):
                    tag = cur.get("name", cur.get("id"))
                    if isinstance(tag, str):
                        label = f"[{part}]({tag})"
            out += label
        else:
            # pydantic puts union/validator tags in loc; skip those that are not keys
            if isinstance(cur, dict) and part not in cur and str(part).startswith(("function-", "union", "tuple")):
                continue
            out += ("." if out else "") + str(part)
            cur = cur.get(part) if isinstance(cur, dict) else None
    return out or "<top level>"


def problems_of(e: ValidationError, data: Any) -> list[str]:
    """One line per error: where, what was expected, and what was found (scalars only)."""
    out = []
    for err in e.errors(include_url=False):
        msg = "unknown key (not allowed here)" if err["type"] == "extra_forbidden" else err["msg"]
        got = err.get("input")
        quiet = err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict | list)
        shown = "" if quiet else f" (got {got!r})"
        out.append(f"{key_path(tuple(err['loc']), data)}: {msg}{shown}")
    return out
