"""Where the real captured tool outputs the tests read live: ../shared/fixtures beside the
checkout (see its SOURCES.md), or /work/shared/fixtures when the checkout is elsewhere (CI)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
