"""json.loads for text that comes from outside (traces, journals, state files, MQTT payloads): what
the parser cannot hold is a JSONDecodeError like any other malformed document, never another
exception the reader did not expect. Two such inputs are valid JSON: an integer of more than 4,300
digits (Python's limit on int-string conversion, sys.get_int_max_str_digits) raises ValueError,
and arrays or objects nested a few thousand deep exhaust the recursion (RecursionError)."""

from __future__ import annotations

import json
from typing import Any


def loads_json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", "", 0) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as e:  # (the digit limit's message names the limit and how to lift it)
        raise json.JSONDecodeError(str(e).split(";")[0], "", 0) from None
