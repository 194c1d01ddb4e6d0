"""Where the real captured tool outputs the tests read: tests/fixtures (sources in its SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
