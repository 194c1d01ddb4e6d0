"""dcgm-exporter: the real scrape from NVIDIA's docs served over a local HTTP server, the real
counter CSVs, the pydcgm path with a stand-in DcgmReader."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest
from fakes.fixture_paths import FIXTURES
from fakes.sig_http import serve

from controller.signals.base import ParseError, Unavailable
from controller.signals.dcgm import (
    DRAM_ACTIVE,
    FAMILIES,
    PCIE_RX,
    PCIE_TX,
    REPLAY,
    SM_ACTIVE,
    DcgmExporterSampler,
    DcgmReading,
    enabled_counters,
)
from controller.signals.dcgm_native import PydcgmSampler

SCRAPE = (FIXTURES / "dcgm-exporter_metrics_a100-sxm4-40gb_mig-1g.5gb_nvidia-docs.prom").read_text()
DEFAULT_CSV = (FIXTURES / "dcgm-exporter_default-counters.csv").read_text()
DCP_CSV = (FIXTURES / "dcgm-exporter_dcp-metrics-included.csv").read_text()


def test_real_scrape_over_http() -> None:
    async def run() -> None:
        with serve() as pages:
            url = pages.set("/metrics", SCRAPE)
            s = DcgmExporterSampler(url, timeout_s=2.0)
            r = await s.sample(10.0)
            assert isinstance(r, DcgmReading)
            g = r.gpus[0]
            assert g.uuid == "GPU-34319582-d595-d1c7-d1d2-179bcfa61660"
            assert g.dram_active == pytest.approx(0.690789)
            assert g.pcie_tx_bps == 33011804 and g.pcie_rx_bps == 97863601  # gauges, bytes/s
            assert g.sm_active is None and g.pcie_replay_rate is None  # a counter needs two scrapes
            assert [(i.gi_id, i.profile, i.dram_active) for i in g.instances] == [(13, "1g.5gb", 0.800339)]
            # no SM_ACTIVE in the scrape: say why, don't report zero
            assert "commented out" in r.unavailable["dcgm:sm_active"]
            assert "dcgm:dram_active" not in r.unavailable
            pages.set(
                "/metrics",
                SCRAPE.replace("PCIE_REPLAY_COUNTER{", "PCIE_REPLAY_COUNTER{", 1).replace(
                    'Hostname="ub20-a100-k8s"} 0\nDCGM_FI_DEV_XID', 'Hostname="ub20-a100-k8s"} 6\nDCGM_FI_DEV_XID', 1
                ),
            )
            r = await s.sample(12.0)
            assert isinstance(r, DcgmReading) and r.gpus[0].pcie_replay_rate == pytest.approx(3.0)

    asyncio.run(run())


def test_counter_csvs_explain_the_missing_fields() -> None:
    for text in (DEFAULT_CSV, DCP_CSV):
        enabled = enabled_counters(text)
        assert SM_ACTIVE not in enabled  # commented out in both shipped files
        assert {DRAM_ACTIVE, PCIE_TX, PCIE_RX, REPLAY} <= set(enabled)
        assert enabled[PCIE_TX] == "gauge" and enabled[REPLAY] == "counter"
    with pytest.raises(ParseError, match="line 2"):
        enabled_counters("# comment\nnot a row\n", "x.csv")


def test_prefilter_keeps_only_used_families() -> None:
    big = SCRAPE + "".join(f'DCGM_FI_DEV_FB_FREE{{gpu="{i}"}} broken value here\n' for i in range(100))
    r = DcgmExporterSampler("http://x").parse(big, 0.0)  # unused families are never parsed
    assert 0 in r.gpus
    assert set(FAMILIES) >= {SM_ACTIVE, DRAM_ACTIVE, PCIE_TX, PCIE_RX, REPLAY}


def test_bad_scrapes_name_the_line() -> None:
    s = DcgmExporterSampler("http://x")
    with pytest.raises(ParseError, match="line 15"):
        s.parse(SCRAPE.replace("} 0.690789", "} zero", 1), 0.0)
    with pytest.raises(ParseError, match="'gpu' label 'x' is not a GPU index"):
        s.parse(SCRAPE.replace('gpu="0"', 'gpu="x"'), 0.0)

    async def run() -> None:
        with serve() as pages:
            r = await DcgmExporterSampler(pages.base + "/metrics", timeout_s=2.0).sample(0.0)
            assert isinstance(r, Unavailable) and "HTTP 404" in r.reason
            url = pages.set("/empty", "")
            r2 = await DcgmExporterSampler(url).sample(0.0)
            assert isinstance(r2, DcgmReading) and not r2.gpus and "none of" in r2.unavailable["dcgm"]

    asyncio.run(run())


def test_pydcgm_path_with_a_stand_in_reader() -> None:
    fields = SimpleNamespace(
        DCGM_FI_PROF_SM_ACTIVE=1002,
        DCGM_FI_PROF_DRAM_ACTIVE=1005,
        DCGM_FI_PROF_PCIE_TX_BYTES=1009,
        DCGM_FI_PROF_PCIE_RX_BYTES=1010,
        DCGM_FI_DEV_PCIE_REPLAY_COUNTER=202,
        DCGM_FI_DEV_GPU_UTIL=203,
    )
    made: dict[str, object] = {}

    class Reader:
        def __init__(self, fieldIds: list[int], updateFrequency: int) -> None:
            made["fields"] = fieldIds
            made["freq"] = updateFrequency

        def GetLatestGpuValuesAsFieldIdDict(self) -> dict[int, dict[int, float]]:
            return {0: {1002: 0.5, 1005: 0.25, 1009: 1e6, 1010: 2e6, 202: 3, 203: 40}, 1: {1002: 9.2e18}}

    s = PydcgmSampler(reader_module=SimpleNamespace(DcgmReader=Reader), fields_module=fields)
    r = asyncio.run(s.sample(0.0))
    assert isinstance(r, DcgmReading)
    assert made["fields"] == [202, 203, 1002, 1005, 1009, 1010]
    g = r.gpus[0]
    assert (g.sm_active, g.dram_active, g.pcie_tx_bps, g.util) == (0.5, 0.25, 1e6, 0.4)
    assert r.gpus[1].sm_active is None  # DCGM's blank sentinel is not a value
    r2 = asyncio.run(PydcgmSampler(reader_module=None, fields_module=fields).sample(0.0))
    assert isinstance(r2, Unavailable) and "not importable" in r2.reason


def exporter_from_csv(csv_text: str) -> str:
    """What a dcgm-exporter configured with this counters CSV would serve for the docs' A100 (GPU 0
    and its 1g.5gb instance): one series per enabled counter, with the captured value when the
    capture has that field."""
    captured: dict[tuple[str, bool], str] = {}
    for line in SCRAPE.splitlines():
        if line.startswith("DCGM_"):
            name = line.split("{", 1)[0]
            captured[(name, "GPU_I_ID" in line)] = line.rsplit(" ", 1)[1]
    base = 'gpu="0",UUID="GPU-34319582-d595-d1c7-d1d2-179bcfa61660",device="nvidia0",Hostname="ub20-a100-k8s"'
    out = []
    for name, typ in enabled_counters(csv_text).items():
        if typ == "label":
            continue
        out.append(f"{name}{{{base}}} {captured.get((name, False), '1')}")
        if name.startswith("DCGM_FI_PROF_") and "PCIE" not in name:  # PCIe bytes are never per instance
            out.append(f'{name}{{{base},GPU_I_PROFILE="1g.5gb",GPU_I_ID="13"}} {captured.get((name, True), "0.5")}')
    return "\n".join(out) + "\n"


def test_exporter_driven_by_the_real_counter_csvs() -> None:
    uncommented = DEFAULT_CSV.replace("# DCGM_FI_PROF_SM_ACTIVE,", "DCGM_FI_PROF_SM_ACTIVE,", 1)
    assert uncommented != DEFAULT_CSV

    async def run() -> None:
        with serve() as pages:
            for csv_text in (DEFAULT_CSV, DCP_CSV):
                url = pages.set("/metrics", exporter_from_csv(csv_text))
                r = await DcgmExporterSampler(url, timeout_s=2.0).sample(0.0)
                assert isinstance(r, DcgmReading)
                assert r.gpus[0].sm_active is None and "commented out" in r.unavailable["dcgm:sm_active"]
                assert r.gpus[0].dram_active == pytest.approx(0.690789)
                assert r.gpus[0].instances[0].dram_active == pytest.approx(0.800339)
            url = pages.set("/metrics", exporter_from_csv(uncommented))
            r = await DcgmExporterSampler(url, timeout_s=2.0).sample(0.0)
            assert isinstance(r, DcgmReading) and "dcgm:sm_active" not in r.unavailable
            assert r.gpus[0].sm_active == 1.0 and r.gpus[0].instances[0].sm_active == 0.5

    asyncio.run(run())


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('DCGM_FI_PROF_DRAM_ACTIVE{gpu="\uff11"} 0.5', "'gpu' label '\uff11' is not a GPU index"),
        ('DCGM_FI_PROF_DRAM_ACTIVE{gpu="00"} 0.9', "'gpu' label '00' is not a GPU index"),
        ('DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",GPU_I_ID="\u0661\u0663"} 0.5', "GPU_I_ID '\u0661\u0663' is not a number"),
        ('DCGM_FI_PROF_PCIE_RX_BYTES{gpu="0"} 5', "DCGM_FI_PROF_PCIE_RX_BYTES for GPU 0 given twice, "),
        ('DCGM_FI_PROF_DRAM_ACTIVE{gpu="0"gpu="1"} 0.5', "bad sample line"),
        ('DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",gpu="1"} 0.5', "label gpu given twice"),
    ],
    ids=["full-width-digit", "leading-zero", "arabic-indic-instance", "series-twice", "no-comma", "label-twice"],
)
def test_labels_and_series_that_named_the_wrong_gpu(line: str, says: str) -> None:
    """Found by fuzzing: each was read, as another GPU's or over the first reading of the series."""
    assert 'DCGM_FI_PROF_PCIE_RX_BYTES{gpu="0"' in SCRAPE
    with pytest.raises(ParseError, match=re.escape(says)):
        DcgmExporterSampler("http://x").parse(SCRAPE + line + "\n", 0.0)


def test_a_pcie_rate_no_link_has_is_unavailable() -> None:
    scrape = re.sub(r"(DCGM_FI_PROF_PCIE_TX_BYTES\{[^}]*gpu=\"0\"[^}]*\}) \S+", r"\1 1e300", SCRAPE, count=1)
    assert scrape != SCRAPE
    assert DcgmExporterSampler("http://x").parse(scrape, 0.0).gpus[0].pcie_tx_bps is None


def test_a_series_copied_per_pod_is_one_reading() -> None:
    """In Kubernetes dcgm-exporter copies a device's series once per pod sharing it, pod labels
    apart and the value the same (NVIDIA/dcgm-exporter issues 340 and 587): one reading."""
    line = next(ln for ln in SCRAPE.splitlines() if ln.startswith("DCGM_FI_PROF_PCIE_RX_BYTES{") and 'gpu="0"' in ln)
    copy = line.replace("{", '{pod="other",', 1)
    a = DcgmExporterSampler("http://x").parse(SCRAPE, 0.0).gpus[0]
    b = DcgmExporterSampler("http://x").parse(SCRAPE + copy + "\n", 0.0).gpus[0]
    assert a == b


_GI_LINE = 22  # the scrape's one MIG instance series: DRAM_ACTIVE of GPU 0 instance 13, 1g.5gb


@pytest.mark.parametrize(
    ("profile", "shown"),
    [
        ("../../x", "'../../x'"),
        ("1G.5GB", "'1G.5GB'"),
        ("\uff11g.5gb", "'\uff11g.5gb'"),
        ("1g.5gb\\n", "'1g.5gb\\n'"),  # the exposition format's escape: a newline in the value
        ("g" * 5000, "'" + "g" * 19 + "..." + "g" * 11 + "' (5002 characters)"),
    ],
    ids=["path", "upper-case", "full-width-digit", "newline", "5000-characters"],
)
def test_a_series_whose_profile_label_is_no_profile_name_is_skipped_with_a_reason(profile: str, shown: str) -> None:
    """GPU_I_PROFILE was taken as it came, and shown whole in the reasons of an instance NVML cannot
    place. The series is left out (its GPU_I_ID still placed it, but the labels are not what they
    seem) and the reading says which, where and why; the rest of the scrape is read."""
    lines = SCRAPE.splitlines(keepends=True)
    assert 'GPU_I_PROFILE="1g.5gb",GPU_I_ID="13"' in lines[_GI_LINE - 1]
    lines[_GI_LINE - 1] = lines[_GI_LINE - 1].replace('GPU_I_PROFILE="1g.5gb"', f'GPU_I_PROFILE="{profile}"')
    r = DcgmExporterSampler("http://x").parse("".join(lines), 0.0)
    assert r.gpus[0].instances == () and r.gpus[0].dram_active == 0.690789
    assert r.unavailable["dcgm:gpu0:gi13:profile"] == (
        f"http://x: line {_GI_LINE}: {DRAM_ACTIVE} for GPU 0 instance 13 skipped:"
        f" GPU_I_PROFILE {shown} is no MIG profile name"
    )
    ok = DcgmExporterSampler("http://x").parse(SCRAPE.replace('"1g.5gb"', '"1g.10gb+me"'), 0.0)
    assert ok.gpus[0].instances[0].profile == "1g.10gb+me" and not any(k.endswith(":profile") for k in ok.unavailable)


@pytest.mark.parametrize("gi_id", ["", None], ids=["empty", "missing"])
def test_an_instance_series_without_its_gpu_i_id_is_skipped_with_a_reason(gi_id: str | None) -> None:
    """Found by hunting: a series with GPU_I_PROFILE but no (or an empty) GPU_I_ID was read as the
    whole GPU's: its instance's DRAM active became GPU 0's, and beside GPU 0's own series the whole
    scrape was refused ("given twice"). It is left out, with a reason; the rest is read."""
    lines = SCRAPE.splitlines(keepends=True)
    gi = 'GPU_I_ID=""' if gi_id is not None else ""
    lines[_GI_LINE - 1] = lines[_GI_LINE - 1].replace('GPU_I_ID="13"', gi).replace(",,", ",").replace(",}", "}")
    r = DcgmExporterSampler("http://x").parse("".join(lines), 0.0)
    assert r.gpus[0].instances == () and r.gpus[0].dram_active == 0.690789
    assert r.unavailable["dcgm:gpu0:gi"] == (
        f"http://x: line {_GI_LINE}: {DRAM_ACTIVE} for GPU 0 skipped: GPU_I_PROFILE '1g.5gb' without a"
        " GPU_I_ID (a MIG instance's series, which one unknown)"
    )


def test_a_value_out_of_its_range_is_none_with_a_reason() -> None:
    """Found by hunting: NaN SM active, 150% util, 1e300 B/s, a negative replay counter, a DRAM
    active of 2 were each read as None and said nothing; each is now named with its line."""
    text = (
        'DCGM_FI_PROF_SM_ACTIVE{gpu="0"} NaN\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} 150\n'
        'DCGM_FI_PROF_PCIE_TX_BYTES{gpu="0"} 1e300\nDCGM_FI_DEV_PCIE_REPLAY_COUNTER{gpu="0"} -1\n'
        'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",GPU_I_ID="3",GPU_I_PROFILE="1g.5gb"} 2\n'
        'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0"} 0.5\nDCGM_FI_PROF_PCIE_RX_BYTES{gpu="0"} 7\n'
    )
    r = DcgmExporterSampler("http://x").parse(text, 0.0)
    g = r.gpus[0]
    assert (g.sm_active, g.util, g.pcie_tx_bps, g.pcie_replay_rate, g.instances[0].dram_active) == (None,) * 5
    assert (g.dram_active, g.pcie_rx_bps) == (0.5, 7.0)
    assert {k: v for k, v in r.unavailable.items() if k.startswith("dcgm:gpu")} == {
        "dcgm:gpu0:sm_active": f"http://x: line 1: {SM_ACTIVE} for GPU 0 is nan, not a fraction 0-1",
        "dcgm:gpu0:util": "http://x: line 2: DCGM_FI_DEV_GPU_UTIL for GPU 0 is 150.0, not a percentage 0-100",
        "dcgm:gpu0:pcie_tx": "http://x: line 3: DCGM_FI_PROF_PCIE_TX_BYTES for GPU 0 is 1e+300, not a byte rate"
        " 0-1e+12/s",
        "dcgm:gpu0:pcie_replay": "http://x: line 4: DCGM_FI_DEV_PCIE_REPLAY_COUNTER for GPU 0 is -1.0, not a count"
        " >= 0",
        "dcgm:gpu0:gi3:dram_active": f"http://x: line 5: {DRAM_ACTIVE} for GPU 0 instance 3 is 2.0, not a fraction 0-1",
    }
    assert not any(k.startswith("dcgm:gpu") for k in DcgmExporterSampler("http://x").parse(SCRAPE, 0.0).unavailable)
