"""Request traces in the public formats an operator brings: the Azure LLM inference trace, BurstGPT,
Mooncake and Qwen-Bailian (replay/request_traces.py). The rows below are the formats' own published
examples (BurstGPT's README and Hugging Face card; Mooncake's trace as quoted by NVIDIA Dynamo's and
AIPerf's docs; the Qwen-Bailian README's record), or made up in their format where said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.cli import main
from replay.request_traces import read_request_trace

BURSTGPT = (
    "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    "5,ChatGPT,472,18,490,Conversation log\n"
    "45,ChatGPT,1087,230,1317,Conversation log\n"
    "118,GPT-4,417,276,693,Conversation log\n"
    "1106,ChatGPT,0,0,0,Conversation log\n"
)
MOONCAKE = (
    '{"timestamp": 0, "input_length": 655, "output_length": 52, "hash_ids": [46, 47]}\n'
    '{"timestamp": 10535, "input_length": 672, "output_length": 26, "hash_ids": [46, 47]}\n'
    "\n"
    '{"timestamp": 27482, "input_length": 655, "output_length": 52, "hash_ids": [46, 47]}\n'
)
AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
)


def _trace(tmp_path: Path, name: str, text: str) -> str:
    f = tmp_path / name
    f.write_text(text, encoding="utf-8")
    return str(f)


def test_burstgpt_seconds_from_its_first_request(tmp_path: Path) -> None:
    t, tok, gen = read_request_trace(_trace(tmp_path, "b.csv", BURSTGPT))
    assert t.tolist() == [0.0, 40.0, 113.0, 1101.0]
    assert tok.tolist() == [472.0, 1087.0, 417.0, 0.0] and gen.tolist() == [18.0, 230.0, 276.0, 0.0]


def test_burstgpt_columns_by_name(tmp_path: Path) -> None:
    """The columns are found by their names, in any order (a filtered export reorders them)."""
    text = "Log Type,Timestamp,Request tokens,Response tokens,Total tokens,Model\nConversation log,5,472,18,490,GPT-4\n"
    t, tok, gen = read_request_trace(_trace(tmp_path, "b.csv", text))
    assert (t.tolist(), tok.tolist(), gen.tolist()) == ([0.0], [472.0], [18.0])


def test_mooncake_milliseconds(tmp_path: Path) -> None:
    t, tok, gen = read_request_trace(_trace(tmp_path, "m.jsonl", MOONCAKE))
    assert t.tolist() == [0.0, 10.535, 27.482]
    assert tok.tolist() == [655.0, 672.0, 655.0] and gen.tolist() == [52.0, 26.0, 52.0]


# The Qwen-Bailian traces (github.com/alibaba-edu/qwen-bailian-usagetraces-anon, README: "timestamp":
# 61.114, "Seconds since request arrive", trace-relative from 0): the README's record second, the
# others made up in its format.
BAILIAN = (
    '{"chat_id": 155, "parent_chat_id": -1, "timestamp": 0.0, "input_length": 480, "output_length": 90,'
    ' "type": "text", "turn": 1, "hash_ids": [1, 2]}\n'
    '{"chat_id": 159, "parent_chat_id": 55, "timestamp": 61.114, "input_length": 521, "output_length": 132,'
    ' "type": "text", "turn": 2, "hash_ids": [1089, 1090, 1091, 6326, 13148]}\n'
    '{"chat_id": 160, "parent_chat_id": -1, "timestamp": 62.5, "input_length": 400, "output_length": 80,'
    ' "type": "search", "turn": 1, "hash_ids": [7]}\n'
)


def test_qwen_bailian_seconds(tmp_path: Path) -> None:
    """Its `timestamp` is seconds where Mooncake's is milliseconds, the keys otherwise the same:
    read as Mooncake's, the trace's two hours played in 7 s. Its session keys tell it apart."""
    t, tok, gen = read_request_trace(_trace(tmp_path, "q.jsonl", BAILIAN))
    assert t.tolist() == [0.0, 61.114, 62.5]
    assert tok.tolist() == [480.0, 521.0, 400.0] and gen.tolist() == [90.0, 132.0, 80.0]


def test_a_json_lines_trace_of_both_kinds_is_refused(tmp_path: Path) -> None:
    mixed = BAILIAN + MOONCAKE.splitlines()[1] + "\n"
    with pytest.raises(ValueError, match=r"q.jsonl:4: bad line: a record of Mooncake's kind \(without chat_id"):
        read_request_trace(_trace(tmp_path, "q.jsonl", mixed))
    with pytest.raises(ValueError, match=r"m.jsonl:5: bad line: a record of Qwen-Bailian's kind .* first was Mooncake"):
        read_request_trace(_trace(tmp_path, "m.jsonl", MOONCAKE + BAILIAN.splitlines()[1] + "\n"))


def test_azure_blank_lines_are_skipped(tmp_path: Path) -> None:
    head, first, second = AZURE.splitlines()
    t, tok, _ = read_request_trace(_trace(tmp_path, "a.csv", f"{head}\n\n{first}\n  \n{second}\n\n"))
    assert t.tolist() == pytest.approx([0.0, 4.314579]) and tok.tolist() == [374.0, 396.0]


def test_azure_times_with_a_utc_offset_and_whole_seconds(tmp_path: Path) -> None:
    """The 2024 traces' times carry a UTC offset; a time on a whole second has no fraction. Cut to
    26 characters, the first lost its offset and the second kept it: the row was refused as naive
    and aware times mixed. (Rows made up in the traces' format.)"""
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,2162,5\n"
        "2024-05-10 00:00:01+00:00,375,101\n"
        "2024-05-10 02:00:02.5+02:00,800,\n"  # another offset: 00:00:02.5 UTC; no GeneratedTokens
    )
    t, tok, gen = read_request_trace(_trace(tmp_path, "a.csv", text))
    assert t.tolist() == pytest.approx([0.0, 0.99007, 2.49007])
    assert tok.tolist() == [2162.0, 375.0, 800.0] and gen.tolist() == [5.0, 101.0, 0.0]


def test_the_azure_multimodal_trace_by_its_column_names(tmp_path: Path) -> None:
    """The Azure LMM inference trace 2025 (AzurePublicDataset, AzureLMMInferenceDataset2025.md:
    TIMESTAMP, NumImages, ContextTokens, GeneratedTokens) was refused as no trace this reads; the
    columns are now found by name. (Rows made up in its format.)"""
    text = (
        "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n"
        "2024-10-15 12:00:00.269000+00:00,1,2900,180\n"
        "2024-10-15 12:00:03.100000+00:00,2,3100,200\n"
    )
    t, tok, gen = read_request_trace(_trace(tmp_path, "lmm.csv", text))
    assert t.tolist() == pytest.approx([0.0, 2.831])
    assert tok.tolist() == [2900.0, 3100.0] and gen.tolist() == [180.0, 200.0]
    short = text.replace(",1,2900,180", ",1")
    with pytest.raises(
        ValueError, match=r"lmm.csv:2: bad row .*2 field\(s\); the header puts TIMESTAMP and ContextTokens in 3"
    ):
        read_request_trace(_trace(tmp_path, "lmm.csv", short))


def test_a_naive_time_among_times_with_an_offset_is_refused(tmp_path: Path) -> None:
    text = AZURE.replace("18:15:50.9951690", "18:15:50.9951690+02:00")
    with pytest.raises(ValueError, match=r":3: bad row .*a time with a UTC offset where the first row's has none"):
        read_request_trace(_trace(tmp_path, "a.csv", text))


# The first 37 rows of the Mooncake FAST '25 conversation trace (github.com/kvcache-ai/Mooncake,
# FAST25-release/traces/conversation_trace.jsonl; hash_ids left out, not read): its times are
# rounded to about 3 s, so requests arrive in groups at one time.
MOONCAKE_ROUNDED = [
    (0, 6758, 500), (0, 7322, 490), (0, 7236, 794), (0, 2290, 316), (0, 6760, 3), (0, 4834, 173),
    (0, 23141, 453), (0, 26888, 458), (0, 10498, 402), (0, 17450, 610),
    (3000, 13544, 71), (3000, 87169, 402), (3000, 6324, 548), (3000, 2012, 354), (3000, 7324, 14),
    (3000, 9418, 145), (3000, 915, 355), (3000, 12846, 466), (3000, 20506, 929), (3000, 16609, 349),
    (3000, 26353, 370), (3000, 6059, 475), (3000, 5954, 420), (3000, 11339, 848), (3000, 15172, 80),
    (3000, 45922, 265),
    (5999, 1053, 26), (5999, 5710, 745), (5999, 7238, 11),
    (9000, 10355, 584), (9000, 1477, 615), (9000, 15366, 344), (9000, 3806, 309), (9000, 8772, 1),
    (9000, 26156, 238), (9000, 16635, 449), (9000, 2293, 31),
]  # fmt: skip


def test_a_rounded_trace_spreads_each_times_requests_over_its_step(tmp_path: Path) -> None:
    """Replayed as written, each 3 s step's requests arrived at once: a batch whose prefills wait
    for one another. They are spread over [time, time + step), cut at the next time (step: the
    tenth percentile of the gaps between distinct times, here 2.999 s), each keeping its tokens, the same way
    on every read; a trace with few ties (the Azure traces, times to the microsecond) is read as
    written."""
    rows = "".join(
        f'{{"timestamp": {ms}, "input_length": {i}, "output_length": {o}}}\n' for ms, i, o in MOONCAKE_ROUNDED
    )
    f = _trace(tmp_path, "m.jsonl", rows)
    t, tok, gen = read_request_trace(f)
    assert t.size == len(MOONCAKE_ROUNDED) and t[0] == 0.0 and bool(np.all(np.diff(t) > 0))  # none together
    at_ms = {(i, o): ms for ms, i, o in MOONCAKE_ROUNDED}
    # each row's time less its rounded one: its place in its step, less the first row's (the reader
    # starts the trace at 0), so all within one step of one another
    off = np.array([at - at_ms[(i, o)] / 1000 for at, i, o in zip(t.tolist(), tok.tolist(), gen.tolist(), strict=True)])
    assert sorted(at_ms[(i, o)] for i, o in zip(tok.tolist(), gen.tolist(), strict=True)) == [
        ms for ms, _, _ in MOONCAKE_ROUNDED
    ]  # every row once, with its tokens
    assert float(off.max() - off.min()) < 2.999 and float(off.max()) < 2.999
    again = read_request_trace(f)
    assert all(np.array_equal(x, y) for x, y in zip((t, tok, gen), again, strict=True))
    # 200 steps of 3 s with five requests each, and a millisecond of jitter beside the rounding at
    # three of them (5999 and 6000 ms both): the step stays 3 s, not 1 ms
    steps = [3000 * k - (k % 67 == 2) for k in range(200)]
    jitter = "".join(
        f'{{"timestamp": {ms}, "input_length": 10, "output_length": 1}}\n' for ms in steps for _ in range(5)
    )
    jitter += "".join(f'{{"timestamp": {3000 * k}, "input_length": 10, "output_length": 1}}\n' for k in (2, 69, 136))
    jt, _, _ = read_request_trace(_trace(tmp_path, "j.jsonl", jitter))
    assert bool(np.all(np.diff(jt) > 0)) and float(jt[4] - jt[0]) > 0.3  # the first five not within 1 ms
    # BurstGPT's whole seconds: two requests at 5 s and one at 6 s; the step is 1 s
    burst = BURSTGPT.replace("45,ChatGPT", "5,ChatGPT").replace("118,GPT-4", "6,GPT-4")
    bt, btok, _ = read_request_trace(_trace(tmp_path, "b.csv", burst))
    assert bool(np.all(np.diff(bt) > 0)) and float(bt[2]) < 2.0 and btok[3] == 0.0  # 1106 s stays last


def test_azure_with_a_byte_order_mark(tmp_path: Path) -> None:
    """A CSV saved by a spreadsheet starts with a byte-order mark: the header is still the header."""
    t, tok, gen = read_request_trace(_trace(tmp_path, "a.csv", "\ufeff" + AZURE))
    assert t.tolist() == pytest.approx([0.0, 4.314579]) and tok.tolist() == [374.0, 396.0]
    assert gen.tolist() == [44.0, 109.0]


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("b.csv", BURSTGPT.replace("45,ChatGPT,1087", "45,ChatGPT,-3"), ":3: bad row"),
        ("b.csv", BURSTGPT.replace("118,GPT-4", "nan,GPT-4"), ":4: bad row"),
        ("m.jsonl", MOONCAKE.replace('"input_length": 672, ', ""), ":2: no 'input_length'"),
        ("m.jsonl", MOONCAKE.replace('{"timestamp": 27482', '{"timestamp": 27482,'), ":4: bad line"),
        ("m.jsonl", MOONCAKE + "[1, 2]\n", ":5: bad line: not a JSON object"),
        (
            "m.jsonl",
            MOONCAKE.replace('"output_length": 26,', '"output_length": 26, "output_length": 9,'),
            ":2: bad line: key 'output_length' given twice in one object",
        ),
        ("b.csv", BURSTGPT.replace("118,GPT-4,417,276,693,Conversation log", "118,GPT-4"), ":4: bad row"),
        ("a.csv", AZURE + "2023-11-16 18:15:52.1\n", ":4: bad row"),
        ("x.csv", "time,tokens\n1,2\n", ":1: not a request trace this reads"),
        ("e.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n", ": no requests"),
    ],
    ids=[
        "negative-tokens",
        "nan-time",
        "burstgpt-short-row",
        "azure-short-row",
        "mooncake-key",
        "mooncake-json",
        "mooncake-array",
        "mooncake-key-twice",
        "unknown",
        "empty",
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = _trace(tmp_path, name, text)
    with pytest.raises(ValueError, match="^" + path) as e:
        read_request_trace(path)
    assert says in str(e.value)
    assert "index out of range" not in str(e.value)  # a cut-off row says how many fields it has


def test_a_scenario_replays_a_burstgpt_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The suite's vllm-ttft with its Azure trace swapped for a BurstGPT one: it loads and runs."""
    rows = "".join(f"{5 + 2 * i},ChatGPT,{300 + i % 7 * 50},{40 + i % 5},0,Conversation log\n" for i in range(400))
    (tmp_path / "b.csv").write_text(BURSTGPT.splitlines()[0] + "\n" + rows)
    text = (Path(__file__).parents[1] / "replay" / "scenarios" / "vllm-ttft.toml").read_text()
    assert text.count('trace = "AzureLLMInferenceTrace_conv.csv"') == 1
    f = tmp_path / "s.toml"
    f.write_text(text.replace('trace = "AzureLLMInferenceTrace_conv.csv"', 'trace = "b.csv"'))
    assert main(["replay", str(f), "--jobs", "1", "--duration", "120", "--policies", "static"]) == 0
    assert "static" in capsys.readouterr().out


@pytest.mark.parametrize("packer", ["gzip", "bz2", "lzma"])
@pytest.mark.parametrize(("name", "text"), [("b.csv", BURSTGPT), ("m.jsonl", MOONCAKE), ("a.csv", AZURE)])
def test_compressed_traces_read_as_the_plain_ones(tmp_path: Path, packer: str, name: str, text: str) -> None:
    import importlib

    plain = read_request_trace(_trace(tmp_path, name, text))
    packed = tmp_path / (name + ".packed")  # told by the first bytes, not the name
    packed.write_bytes(importlib.import_module(packer).compress(text.encode()))
    for a, b in zip(read_request_trace(str(packed)), plain, strict=True):
        assert list(a) == list(b)


def test_a_compressed_trace_cut_short_is_an_error_naming_the_file(tmp_path: Path) -> None:
    import gzip

    body = BURSTGPT + "".join(f"{2000 + i},ChatGPT,{i % 500},{i % 90},0,Conversation log\n" for i in range(5000))
    packed = tmp_path / "b.csv.gz"
    packed.write_bytes(gzip.compress(body.encode())[:-100])
    with pytest.raises(ValueError, match=rf"{packed}:\d+: cannot read: Compressed file ended"):
        read_request_trace(str(packed))
