"""The rule for host and tenant names, shared by the daemon's config (controller/config.py) and the
lab's scenarios (replay/scenario_schema.py, replay/scenario_host.py): the names end up in metric
labels, MQTT topics and file names, so a name that one accepts the other must accept too."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
NAME_RULE = "must be 1-64 characters of letters, digits, '_', '.', '@', '-'"


def check_name(v: str) -> str:
    if not NAME_PATTERN.match(v):
        raise ValueError(NAME_RULE)
    return v


# Host and tenant names end up in metric labels, MQTT topics and file names.
Name = Annotated[str, AfterValidator(check_name)]
