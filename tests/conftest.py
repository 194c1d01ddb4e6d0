"""Shared pytest set-up: the property tests' profile."""

from __future__ import annotations

import os

from hypothesis import settings

# Under CI (CI=true, as .ci/run runs) the property tests draw a fixed set of examples: a fresh
# random draw that fails there blocks a landing for a bug that was not the change's. A developer's
# runs draw new examples every time, which is where such bugs are found (one was: CHANGELOG, the
# io.stat key given twice), and print_blob lets a failure be replayed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")
