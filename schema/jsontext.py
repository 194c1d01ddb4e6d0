"""json.loads for text that comes from outside (traces, journals, state files, MQTT payloads): what
the parser cannot hold is a JSONDecodeError like any other malformed document, never another
exception the reader did not expect. Two such inputs are valid JSON: an integer of more than 4,300
digits (Python's limit on int-string conversion, sys.get_int_max_str_digits) raises ValueError,
and arrays or objects nested a few thousand deep exhaust the recursion (RecursionError). Two more
are documents json.loads takes and no writer of ours would send: bytes in UTF-16 or UTF-32 (it
guesses the encoding of bytes) and an object with a key given twice (the last value wins)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from schema.problems import short_text


class JsonTextError(json.JSONDecodeError):
    """A document refused for what it is, not where the parser stopped: it has no position, and its
    message is only what was wrong (a JSONDecodeError, so every reader's except takes it)."""

    def __init__(self, msg: str) -> None:
        ValueError.__init__(self, msg)
        self.msg, self.doc, self.pos, self.lineno, self.colno = msg, "", 0, 1, 1

    def __reduce__(self) -> tuple[type[JsonTextError], tuple[str]]:  # JSONDecodeError's takes three
        return type(self), (self.msg,)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object_pairs_hook: the object as a dict, or JsonTextError naming a key given twice.
    Only an object whose dict came out shorter than its pairs is searched, so a good one costs
    one dict() and a length compared (json.loads alone builds the dict too)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonTextError(f"key {shown(key)} given twice in one object")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)


def loads_json(text: str | bytes) -> Any:
    """`text` parsed; bytes are UTF-8 or refused (json.loads guessed UTF-16 and UTF-32 too, and let
    lone surrogates through), and a key given twice in an object is refused (JsonTextError)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonTextError(f"not UTF-8 text: {e.reason} at byte {e.start}") from None
    if text.startswith("\ufeff"):  # as json.loads refuses it (the decoder's decode() does not check)
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", "", 0) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as e:  # (the digit limit's message names the limit and how to lift it)
        raise json.JSONDecodeError(str(e).split(";")[0], "", 0) from None


def finite_float(v: Any) -> float | None:
    """A parsed JSON number as a float a reading can use: None for a boolean, a non-number, NaN or
    an infinity, and for an integer past a double's range (float() raises OverflowError on one)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


U64_MAX = (1 << 64) - 1
# A u64 as a fast path's regular expression takes it: ASCII digits, under 20 of them (below
# 10**19 < 2**64, so int() of it needs no range check); a longer one takes the careful path
# (kernel_u64), which checks it against U64_MAX.
U64_PATTERN = "[0-9]{1,19}"


def ascii_digits(tok: str) -> bool:
    """Only 0-9, at least one. str.isdecimal() also takes other scripts' digits ("١", "０"), which
    int() reads as numbers: what another program printed as a number never has them."""
    return tok.isascii() and tok.isdigit()


def kernel_u64(tok: str) -> int | None:
    """A number the kernel printed as a u64 (a counter, a limit): ASCII decimal digits up to
    U64_MAX, else None. int() would take "-5", "١" and "1_0", and raise a bare ValueError past
    4,300 digits."""
    if not ascii_digits(tok) or len(tok) > 20:
        return None
    v = int(tok)
    return v if v <= U64_MAX else None


def text_lines(text: str) -> list[str]:
    r"""A kernel file's or a tool's lines, split where their writers end a line: at "\n" only.
    str.splitlines() also breaks at \r, \x0b, \x0c, \x1c-\x1e, \x85, \u2028 and \u2029, so such a
    byte in garbage shifted the numbers of the lines after it (an error could name a line past the
    file's end). The empty piece after a final "\n" is no line: [] for "", as splitlines() gives."""
    lines = text.split("\n")
    if not lines[-1]:
        lines.pop()
    return lines


# whitespace a kernel file's writer never separates fields with (a CRLF's \r is a line's last byte)
_NOT_A_SEPARATOR = re.compile(r"[^\S \t\r]")
_SEPARATORS = re.compile(r"[ \t\r]+")


def fields(line: str) -> list[str]:
    r"""A kernel file's line split into fields where its writer separates them: at spaces and tabs.
    str.split() also splits at \x0b, \x0c, \x1c-\x1f, \x85, \xa0 and the Unicode spaces, so garbage
    such as "8:16\x1c1048576" read as two good fields; here such a character stays inside its
    field, whose own check then refuses it."""
    if _NOT_A_SEPARATOR.search(line) is None:
        return line.split()
    return [f for f in _SEPARATORS.split(line) if f]


def shown(v: Any) -> str:
    """A parsed value as an error message shows it (a 400-digit number would fill the log line)."""
    try:
        return short_text(repr(v), 40)
    except ValueError:  # an integer past the int-string digit limit (not from JSON: from code)
        return f"an integer of {v.bit_length()} bits"
