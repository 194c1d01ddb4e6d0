"""Pydantic validation errors as one line per problem, named by dotted key path.

Shared by the config (controller/config.py) and scenario (replay/scenario.py) loaders, so that an
operator reads the same kind of message for either file: `tenants[0](llm).slo_ms: ... (got -1)`;
and the TOML reading they and replay's canary policy files share (loads_toml).

A validator that checks several fields together raises `KeyProblem` (one key) or `KeyProblems`
(several, e.g. two tenants naming the same MIG instance): each names the key it is about, relative
to the model that raised it, so that the line points at that key and not at the model as a whole.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError


class KeyProblem(ValueError):
    """A problem with `key` (a dotted path relative to the validated model, '' for the model)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class KeyProblems(ValueError):
    """Several problems found at once by one validator."""

    def __init__(self, problems: Iterable[KeyProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.key}: {p.message}" for p in self.problems))


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


def split_key(key: str) -> tuple[Any, ...]:
    """'tenants[2](etl).instance' -> ('tenants', 2, 'instance'): a KeyProblem's key as a pydantic
    loc (a `(NAME)` label is dropped: key_path puts it back from the data)."""
    out: list[Any] = []
    for part in re.sub(r"\([^()]*\)", "", key).split(".") if key else ():
        name, _, rest = part.partition("[")
        if name:
            out.append(name)
        for idx in rest.replace("]", "").split("[") if rest else ():
            out.append(int(idx))
    return tuple(out)


def problems_of(e: ValidationError, data: Any) -> list[str]:
    """One line per error: where, what was expected, and what was found (scalars only)."""
    out = []
    for err in e.errors(include_url=False):
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, KeyProblems | KeyProblem):
            for p in cause.problems if isinstance(cause, KeyProblems) else [cause]:
                out.append(f"{key_path(loc + split_key(p.key), data)}: {p.message}")
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif err["type"] == "value_error" and cause is not None:
            msg = str(cause)  # without pydantic's "Value error, " prefix
        else:
            msg = err["msg"]
        got = err.get("input")
        quiet = err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict | list)
        shown = "" if quiet else f" (got {short_text(repr(got))})"
        out.append(f"{key_path(loc, data)}: {msg}{shown}")
    return out


def short_text(text: str, limit: int = 100) -> str:
    """A value as the message shows it: a 5,000-character path would bury the key it is about."""
    return text if len(text) <= limit else f"{text[: limit - 20]}...{text[-12:]} ({len(text)} characters)"


def loads_toml(text: str) -> dict[str, Any]:
    """tomllib.loads, where a document nested too deeply for its recursion (`x = [[[[...` a few
    thousand deep: tomllib recurses once per level) or an integer too long to convert is a
    TOMLDecodeError like any other syntax error. A UTF-8 byte-order mark (an editor's, before the
    first line) is not TOML, and tomllib's "Invalid statement (at line 1, column 1)" would not say
    so: it is named."""
    if text.startswith("\ufeff"):
        raise tomllib.TOMLDecodeError(
            "the file starts with a UTF-8 byte-order mark (U+FEFF, written by some editors), which TOML does not"
            " allow: save it without one"
        )
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("arrays or tables nested too deeply") from None
    except tomllib.TOMLDecodeError:
        raise
    except ValueError as e:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        raise tomllib.TOMLDecodeError(str(e).split(";")[0]) from None
