"""Valid JSON and TOML that a parser cannot hold: an integer of more than 4,300 digits (Python's
int-string conversion limit), one past a double's range where a float is expected, arrays nested a
hundred thousand deep. Each reader turns them into its own clear error naming the file and line (or
counts and skips them), like any malformed input, never a traceback (found by fuzzing every reader:
a trace, a config, the daemon's state, a journal line, an MQTT payload, a JSON-lines latency file)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

import pytest

from actuators.journal import read_file
from controller.config import ConfigError, parse_config
from controller.exporters.mqtt import parse_pushed
from controller.signals.latency import JsonlLatencySampler
from fsm.codec import DecodeError, decode
from fsm.state import ControllerState
from replay.trace import TraceError, read_trace
from schema.jsontext import loads_json
from schema.problems import loads_toml

LONG_INT = "9" * 4301  # one digit past the limit
HUGE_INT = "1" + "0" * 400  # a valid integer; as a float, past 1.8e308
DEEP = "[" * 100_000

TRACE = Path(__file__).resolve().parent / "data" / "trace-v1_example-spec_5-ticks.jsonl"


@pytest.mark.parametrize(("text", "message"), [(LONG_INT, "4300 digits"), (DEEP, "nested too deeply")])
def test_json_that_the_parser_cannot_hold_is_malformed_json(text: str, message: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=message):
        loads_json(text)
    assert loads_json(HUGE_INT) == 10**400  # the parser holds this one: the float readers must not choke


@pytest.mark.parametrize(("text", "message"), [(f"x = {LONG_INT}", "4300 digits"), ("x = " + DEEP, "too deeply")])
def test_toml_that_the_parser_cannot_hold_is_a_syntax_error(text: str, message: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError, match=message):
        loads_toml(text)
    with pytest.raises(ConfigError, match=message):
        parse_config(text.replace("x = ", "[policy]\ny_windows = "))


def test_a_number_past_a_doubles_range_is_a_decode_error_naming_its_path() -> None:
    with pytest.raises(DecodeError, match=r"obs\.t: a number out of range \(401 digits\)"):
        decode(float, int(HUGE_INT), "obs.t")


@pytest.mark.parametrize("text", [DEEP, '{"version": 1, "last_t": ' + DEEP + "]}"])
def test_a_state_file_nested_too_deeply_is_a_value_error(text: str) -> None:
    # the daemon's _load_state catches ValueError (an unreadable state starts afresh, reported)
    with pytest.raises(ValueError):
        ControllerState.from_json(text)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"kind": "obs", "obs": ' + LONG_INT + "}", r":7: not JSON: Exceeds the limit \(4300 digits\)"),
        (DEEP, ":7: not JSON: arrays or objects nested too deeply"),
        ('{"kind": "obs", "obs": {"t": ' + HUGE_INT + "}}", r":7: bad observation: obs\.t: a number out of range"),
    ],
)
def test_a_trace_line_the_parser_cannot_hold_names_its_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(TRACE.read_text() + line + "\n")
    _, observations = read_trace(f)
    with pytest.raises(TraceError, match=message):
        list(observations)


def test_a_journal_line_the_parser_cannot_hold_is_skipped_and_named(tmp_path: Path) -> None:
    f = tmp_path / "journal.jsonl"
    f.write_text('{"kind": "intent", "n": 1}\n' + DEEP + "\n" + LONG_INT + '\n{"kind": "outcome", "n": 2}\n')
    got, skipped = read_file(f)
    assert [r.rec["n"] for r in got] == [1, 2]
    assert [s.split(": not JSON: ")[0] for s in skipped] == [f"{f}:2", f"{f}:3"]
    assert "nested too deeply" in skipped[0] and "4300 digits" in skipped[1]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (HUGE_INT, "not a finite number: 10000000000000000000...000000000000 (401 characters)"),
        ('{"count": 5, "over_slo": ' + HUGE_INT + "}", "over_slo 10000000000000000000...000000000000 (401 characters)"),
        (DEEP, "not JSON: arrays or objects nested too deeply"),
        (LONG_INT, "not JSON: Exceeds the limit"),
    ],
)
def test_an_mqtt_payload_the_parser_cannot_hold_is_a_value_error(payload: str, message: str) -> None:
    # the bridge counts a ValueError as a malformed message and stays connected
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_pushed(payload.encode())


def test_a_latency_line_past_a_doubles_range_is_a_bad_line_and_the_good_ones_count(tmp_path: Path) -> None:
    p = tmp_path / "lat.jsonl"
    p.write_text("")
    s = JsonlLatencySampler("llm", str(p), slo_s=0.2)

    async def ticks() -> tuple[list[float], list[str]]:
        await s.sample(0.0)  # starts at the end of the file
        with p.open("a") as f:
            f.write('{"latency_s": 0.1}\n{"latency_s": ' + HUGE_INT + '}\n{"latency_s": 0.3}\n' + DEEP + "\n")
        return await asyncio.to_thread(s.read_new)

    samples, bad = asyncio.run(ticks())
    assert samples == [0.1, 0.3]
    assert len(bad) == 2 and "line 2: field 'latency_s' is not a latency in [0, 3600] s" in bad[0]
    assert "line 4: not JSON (arrays or objects nested too deeply" in bad[1]
