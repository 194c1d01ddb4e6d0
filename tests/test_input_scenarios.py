"""Scenario values that ran when they should have been refused, or crashed, hung or ran away with
memory mid-run (found by a hunt over the scenario loader, 2027-01): each is now refused before any
run, the message naming the file and the dotted key (and a request trace's line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main
from replay.scenario import ScenarioError, parse_scenario

pytestmark = pytest.mark.timeout(60)  # a regression here is a hang or a runaway: fail it

# A one-host scenario: a NUMA node, a root complex, a switch with a GPU and a drive under it, a
# sensitive tenant and an ETL one reading the drive into the GPU.
MINI = """[scenario]
name = "mini"
seed = 1
tick_s = 2.0
duration_s = 60

[[hosts]]
name = "h"
nodes = [
  { id = "numa0", kind = "numa", index = 0, cpus = "0-7" },
  { id = "rc0", kind = "root_complex", parent = "numa0" },
  { id = "sw0", kind = "switch", parent = "rc0", link_gbps = 24.0 },
  { id = "gpu0", kind = "gpu", parent = "sw0", model = "A100-SXM4-40GB", link_gbps = 24.0, layout = ["3g.20gb@0", "3g.20gb@4"] },
  { id = "nvme0", kind = "nvme", parent = "sw0", link_gbps = 7.0, aliases = ["nvme0n1"] },
]

[[hosts.tenants]]
name = "llm"
role = "sensitive"
instance = "gpu0/3g.20gb@0"
slo_ms = 20
requests = { rate = 50, compute_ms = 5, bytes = 1e6 }

[[hosts.tenants]]
name = "etl"
role = "bulk"
instance = "gpu0/3g.20gb@4"
cgroup = "etl.slice"
devices = ["nvme0n1"]
demand_gbps = 5.0
flows = [ { path = ["nvme0", "cpu"] }, { path = ["cpu", "gpu0"] } ]
schedule = { period_s = 60, on = [[10, 40]] }
"""  # noqa: E501

H = "hosts[0](h)"
LLM = f"{H}.tenants[0](llm)"
ETL = f"{H}.tenants[1](etl)"


def edited(*changes: tuple[str, str], base: str = MINI) -> str:
    """`base` with each (old, new) replaced, old found exactly once."""
    for old, new in changes:
        assert base.count(old) == 1, old
        base = base.replace(old, new)
    return base


def refused(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "s.toml")
    assert str(e.value).startswith("s.toml: ")
    return e.value.problems


def test_the_mini_scenario_is_valid() -> None:
    assert parse_scenario(MINI, "s.toml").hosts[0].name == "h"


# -- names: the daemon's config's rule ----------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "key", "got"),
    [
        ('name = "llm"', 'name = ""', f"{H}.tenants[0]().name", "''"),
        ('name = "llm"', 'name = "a\\nb"', f"{H}.tenants[0](a\nb).name", "'a\\nb'"),
        ('name = "h"', 'name = "my host"', "hosts[0](my host).name", "'my host'"),
        ('name = "h"', 'name = "' + "h" * 65 + '"', f"hosts[0]({'h' * 65}).name", "'hhh"),
    ],
    ids=["tenant-empty", "tenant-newline", "host-space", "host-too-long"],
)
def test_a_host_or_tenant_name_the_daemon_would_refuse(old: str, new: str, key: str, got: str) -> None:
    """Was: taken as given (an empty tenant name, one with a newline: metric labels and file names)."""
    problems = refused(edited((old, new)))
    assert problems[0].startswith(f"{key}: must be 1-64 characters of letters, digits"), problems
    assert f"(got {got}" in problems[0]


def test_copies_of_a_host_must_have_names_the_rule_takes() -> None:
    long = "h" * 63
    problems = refused(edited(('name = "h"', f'name = "{long}"\ncopies = 2')))
    assert problems == [f"hosts[0]({long}).name: with copies = 2, '{long}-1': must be 1-64 characters of "
                        "letters, digits, '_', '.', '@', '-'"]  # fmt: skip


def test_the_scenario_and_the_config_share_the_name_rule() -> None:
    from controller import config
    from schema import names

    assert config.check_name is names.check_name and config.Name is names.Name


# -- [policy]: what the config checks, checked alike --------------------------------------------
@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ('mig_ladder = { "A100-SXM4-40GB" = ["9g.99gb", "1g.5gb"] }',
         "policy.mig_ladder: A100-SXM4-40GB: GPU model A100-SXM4-40GB has no MIG profile '9g.99gb'"),
        ('mig_ladder = { "A100-SXM4-40GB" = "1g.5gb" }',
         "policy.mig_ladder: A100-SXM4-40GB: expected a list of MIG profile names, smallest first, got '1g.5gb'"),
        ('mig_ladder = { "A100-SXM4-40GB" = ["3g.20gb", "1g.5gb"] }',
         "policy.mig_ladder: A100-SXM4-40GB: profiles must be given smallest first"),
        ('mig_ladder = { "B300" = ["1g.5gb"] }', "policy.mig_ladder: B300: unknown GPU model 'B300'"),
        ("io_share_tier = -5", 'policy.io_share_tier: expected one of "switch" (1), "root_complex" (2), "numa" (3), '
         '"system" (4), got -5'),
        ("io_share_tier = 9", "policy.io_share_tier: expected one of"),
        ('io_share_tier = "rack"', "policy.io_share_tier: expected one of"),
        ("io_share_tier = true", "policy.io_share_tier: expected one of"),
        ("enforce = false", "policy.enforce: not a [policy] key here: the runner sets it per policy"),
    ],
    ids=["ladder-profile", "ladder-string", "ladder-order", "ladder-model", "tier-negative", "tier-9",
         "tier-name", "tier-bool", "enforce"],
)  # fmt: skip
def test_a_policy_value_the_config_would_refuse(policy: str, says: str) -> None:
    """Were: KeyError from fsm/mig.py at the first resize of a `--policies full` run (a ladder's
    unknown profile, or a string iterated as its characters); any int taken as a tier; a `full`
    that was silently a dry run."""
    problems = refused(MINI + f"\n[policy]\n{policy}\n")
    assert problems[0].startswith(says), problems


@pytest.mark.parametrize(("tier", "want"), [('"switch"', 1), ('"system"', 4), ("2", 2)])
def test_io_share_tier_as_the_config_spells_it(tier: str, want: int) -> None:
    """Was: the config's spelling ("numa") refused, any int taken."""
    from fsm.topology import Tier

    sc = parse_scenario(MINI + f"\n[policy]\nio_share_tier = {tier}\n", "s.toml")
    assert sc.hosts[0].spec.policy.io_share_tier is Tier(want)


def test_a_mig_ladder_reaches_the_policy_under_the_models_key() -> None:
    sc = parse_scenario(MINI + "\n[policy]\nmig_ladder = { 'NVIDIA A100-SXM4-40GB' = ['1g.5gb', '7g.40gb'] }\n", "s")
    assert sc.hosts[0].spec.policy.mig_ladder == {"A100-SXM4-40GB": ("1g.5gb", "7g.40gb")}


def test_the_scenario_spells_tiers_and_checks_ladders_as_the_config_does() -> None:
    from typing import get_args

    from controller.config import PolicyConfig
    from fsm.mig import checked_ladder
    from replay.scenario import TIERS

    assert set(get_args(PolicyConfig.model_fields["io_share_tier"].annotation)) == set(TIERS)
    with pytest.raises(ValueError, match="B300: unknown GPU model"):
        checked_ladder({"B300": ["1g.5gb"]})


def test_a_canary_policy_file_takes_the_configs_spelling(tmp_path: Path) -> None:
    from fsm.topology import Tier
    from replay.canary import CanaryError, load_policy_table

    f = tmp_path / "p.toml"
    f.write_text('[policy]\nio_share_tier = "switch"\nmig_ladder = { "A100-SXM4-40GB" = ["1g.5gb", "7g.40gb"] }\n')
    table = load_policy_table(str(f))
    assert table == {"io_share_tier": Tier.SWITCH, "mig_ladder": {"A100-SXM4-40GB": ("1g.5gb", "7g.40gb")}}
    f.write_text("[policy]\nenforce = true\n")
    with pytest.raises(CanaryError, match=f"^{f}: policy.enforce: not a"):
        load_policy_table(str(f))


# -- CPU lists: the topology readers' bound ------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        ('cpus = "0-7"', 'cpus = "0-4000000000"', f"{H}.nodes[0](numa0).cpus", "CPU 4000000000 in '0-4000000000': CPU "
         "numbers go up to 65535"),
        ('cpus = "0-7"', 'cpus = "0-7,65536"', f"{H}.nodes[0](numa0).cpus", "CPU 65536 in '65536'"),
        ('cpus = "0-7"', 'cpus = "' + ",".join(["0-65535"] * 3) + '"', f"{H}.nodes[0](numa0).cpus",
         "more than 65536 CPUs"),
        ('cpus = "0-7"', 'cpus = "7-0"', f"{H}.nodes[0](numa0).cpus", "bad CPU range '7-0'"),
        ('cpus = "0-7"', 'cpus = "0-' + "9" * 5000 + '"', f"{H}.nodes[0](numa0).cpus", "CPU 99999999999999999999 in"),
        ('cgroup = "etl.slice"', 'cgroup = "etl.slice"\ncpus = "0-999999999999"\ncpu_threads = 4', f"{ETL}.cpus",
         "CPU 999999999999 in '0-999999999999'"),
    ],
    ids=["numa-huge", "numa-past-65535", "numa-too-many", "numa-backwards", "numa-5000-digits", "tenant-huge"],
)  # fmt: skip
def test_a_cpu_list_past_the_topology_readers_bound(old: str, new: str, key: str, says: str) -> None:
    """Was: MemoryError in replay/scenario.py's _cpus (a list of four billion CPU numbers)."""
    problems = refused(edited((old, new)))
    assert problems[0].startswith(f"{key}: ") and says in problems[0], problems


def test_the_scenarios_cpu_bound_is_the_topology_readers() -> None:
    from controller.topology import MAX_CPUS as READERS
    from replay.scenario import MAX_CPUS

    assert MAX_CPUS == READERS


# -- spans shorter than a tick ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("meta", "key", "says"),
    [
        ("[scenario.restarts]\nevery_s = 1e-6", "scenario.restarts.every_s", "greater than or equal to 1"),
        ("[scenario.restarts]\nevery_s = 1e-300", "scenario.restarts.every_s", "greater than or equal to 1"),
        ("[scenario.restarts]\nevery_s = 3", "scenario.restarts.every_s", "3 s is shorter than one tick (tick_s = 5)"),
        ("duration_s = 1", "scenario.duration_s", "1 s is shorter than one tick (tick_s = 5)"),
        ("duration_s = 1e-300", "scenario.duration_s", "1e-300 s is shorter than one tick"),
    ],
    ids=["restarts-1e-6", "restarts-1e-300", "restarts-below-tick", "duration", "duration-1e-300"],
)
def test_a_span_shorter_than_one_tick(meta: str, key: str, says: str) -> None:
    """Were: MemoryError (restarts every 1e-6 s, drawn one by one), a loop that never ended (1e-300 s:
    the next restart never passed the tick's end), and a run of no whole tick that printed figures."""
    text = edited(("tick_s = 2.0\nduration_s = 60", "tick_s = 5.0\nduration_s = 60"))
    if meta.startswith("["):
        text = edited(("[[hosts]]\n", f"{meta}\n\n[[hosts]]\n"), base=text)
    else:
        text = edited(("duration_s = 60", meta), base=text)
    problems = refused(text)
    assert problems[0].startswith(f"{key}: ") and says in problems[0], problems


def test_restarts_at_the_tick_are_taken() -> None:
    sc = parse_scenario(edited(("[[hosts]]\n", "[scenario.restarts]\nevery_s = 2\n\n[[hosts]]\n")), "s.toml")
    assert sc.meta.restarts.every_s == 2.0


@pytest.mark.parametrize("suite", [False, True])
def test_a_duration_flag_shorter_than_one_tick(suite: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: a run of one tick reported as a run of the 1e-300 s asked for."""
    args = ["replay", "--suite"] if suite else ["replay", "p4d-demo", "--policies", "static"]
    assert main([*args, "--jobs", "1", "--duration", "1e-300"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tailguard replay: --duration 1e-300 is shorter than one tick of "), err
    assert "(tick_s = 5 s)" in err


# -- numbers past what any real request or link has ---------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "key", "says"),
    [
        ("compute_ms = 5,", "compute_ms = 1e300,", f"{LLM}.requests.compute_ms", "less than or equal to 3600000"),
        ("bytes = 1e6", "bytes = 1e300", f"{LLM}.requests.bytes", "less than or equal to 1000000000000"),
        ("bytes = 1e6", "bytes = 1e6, tokens = 1e9", f"{LLM}.requests.tokens", "less than or equal to 10000000"),
        ("bytes = 1e6", 'bytes = 1e6, server = "batched", generated_tokens = 1e9',
         f"{LLM}.requests.generated_tokens", "less than or equal to 1000000"),
        ("bytes = 1e6", "bytes = 1e6, compute_ms_per_token = 1e300", f"{LLM}.requests.compute_ms_per_token",
         "less than or equal to 1000"),
        ("bytes = 1e6", "bytes = 1e6, bytes_per_token = 1e300", f"{LLM}.requests.bytes_per_token",
         "less than or equal to 1000000000"),
        ('link_gbps = 7.0', 'link_gbps = 1e-300', f"{H}.nodes[4](nvme0).link_gbps", "greater than or equal to 0.001"),
        ('link_gbps = 7.0', 'link_gbps = 1e300', f"{H}.nodes[4](nvme0).link_gbps", "less than or equal to 10000"),
        ("demand_gbps = 5.0", "demand_gbps = 1e300", f"{ETL}.demand_gbps", "less than or equal to 10000"),
        ("on = [[10, 40]] }", "on = [[10, 40]], level = 1e300 }", f"{ETL}.schedule.level",
         "less than or equal to 1000"),
        ("seed = 1\n", "seed = 1\nirq_base = 1e300\n", "scenario.irq_base", "less than or equal to 10000000"),
    ],
    ids=["compute-ms", "bytes", "tokens", "generated-tokens", "ms-per-token", "bytes-per-token", "link-tiny",
         "link-huge", "demand", "level", "irq-base"],
)  # fmt: skip
def test_a_number_past_any_real_request_or_link(old: str, new: str, key: str, says: str) -> None:
    """Were: numpy overflow warnings and a table of '-' naming nothing (compute_ms = 1e300, bytes of
    1e300, a link of 1e-300 GB/s), a 60 s replay running for minutes (1e9 generated tokens)."""
    problems = refused(edited((old, new)))
    assert problems[0].startswith(f"{key}: Input should be {says}"), problems


TRACE_ROWS = {
    "azure.csv": (b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n",
                  b"2023-11-16 18:15:50.9951690,{tok},{gen}\n"),
    "burst.csv": (b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0,m,1,1,2,x\n",
                  b"5,m,{tok},{gen},2,x\n"),
    "moon.jsonl": (b'{"timestamp": 0, "input_length": 1, "output_length": 1}\n',
                   b'{{"timestamp": 5000, "input_length": {tok}, "output_length": {gen}}}\n'),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TRACE_ROWS))
@pytest.mark.parametrize(
    ("tok", "gen", "says"),
    [
        ("1e9", "1", "1e+09: at most 10000000 tokens a request"),
        ("10", "1e9", "1e+09: at most 1000000 tokens a request"),
    ],
    ids=["context", "generated"],
)
def test_a_request_trace_row_past_any_real_request(
    name: str, tok: str, gen: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: a 60 s replay that ran for minutes (a row of a billion tokens); now the trace's file
    and line, under the scenario's key."""
    head, row = TRACE_ROWS[name]
    (tmp_path / name).write_bytes(head + row.decode().format(tok=tok, gen=gen).encode())
    f = tmp_path / "s.toml"
    f.write_text(edited(("rate = 50, compute_ms = 5, bytes = 1e6", f'trace = "{name}", compute_ms = 5')))
    assert main(["replay", str(f), "--jobs", "1", "--policies", "static"]) == 2
    err = capsys.readouterr().err
    line = 2 if name.endswith(".jsonl") else 3  # the CSVs' header is line 1
    assert err.startswith(f"tailguard replay: {f}: {LLM}.requests.trace: {tmp_path}/{name}:{line}: "), err
    assert says in err and "Traceback" not in err, err


# -- the PCIe tree and the flows over it -----------------------------------------------------------
NVME1 = '  { id = "nvme1", kind = "nvme", parent = "sw0", link_gbps = 7.0, aliases = ["nvme1n1"] },\n]'


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ('  { id = "rc0"', '  { id = "numa1", kind = "numa", index = 0, cpus = "8-15" },\n  { id = "rc0"',
         f"{H}.nodes[1](numa1).index: NUMA node 0 is 'numa0' already"),
        ('kind = "nvme", parent = "sw0"', 'kind = "nvme", parent = "gpu0"',
         f"{H}.nodes[4](nvme0).parent: a gpu ('gpu0'): a nvme hangs off a host, numa, root_complex or switch (kinds "
         "nest host > numa > root_complex > switch > device)"),
        ('  { id = "rc0"', '  { id = "numa1", kind = "numa", index = 1, parent = "numa0" },\n  { id = "rc0"',
         f"{H}.nodes[1](numa1).parent: a numa ('numa0'): a numa hangs off a host ("),
        ('"switch", parent = "rc0", link_gbps = 24.0 },', '"switch", parent = "rc0", link_gbps = 24.0 },\n'
         '  { id = "rc1", kind = "root_complex", parent = "sw0" },', f"{H}.nodes[3](rc1).parent: a switch ('sw0'): a "
         "root_complex hangs off a host or numa ("),
        ("\n]", NVME1.replace('["nvme1n1"]', '["nvme0n1"]'), f"{H}.nodes[5](nvme1).aliases[0]: 'nvme0n1' already "
         "names node 'nvme0'"),
        ("\n]", NVME1.replace('["nvme1n1"]', '["gpu0"]'), f"{H}.nodes[5](nvme1).aliases[0]: 'gpu0' already names "
         "node 'gpu0'"),
        ('aliases = ["nvme0n1"] },\n]', 'aliases = ["nvme0n1", "nvme1"] },\n' + NVME1,
         f"{H}.nodes: node id 'nvme1' is also an alias of node 'nvme0'"),
        ('{ path = ["nvme0", "cpu"] }', '{ path = ["cpu", "cpu"] }',
         f"{ETL}.flows[0].path: host memory at both ends: a flow runs between two devices, or a device and cpu"),
        ('{ path = ["nvme0", "cpu"] }', '{ path = ["nvme0", "nvme0n1"] }', f"{ETL}.flows[0].path: 'nvme0' at both "
         "ends"),
        ('{ path = ["nvme0", "cpu"] }', '{ path = ["sw0", "cpu"] }', f"{ETL}.flows[0].path: 'sw0' is a switch: a "
         "flow ends at a device (gpu, nvme, nic) or cpu"),
        ('{ path = ["cpu", "gpu0"] }', '{ path = ["numa0", "gpu0"] }', f"{ETL}.flows[1].path: 'numa0' is a numa"),
        ('{ path = ["cpu", "gpu0"] }', '{ path = ["cpu", "rc0"] }', f"{ETL}.flows[1].path: 'rc0' is a root_complex"),
        ('devices = ["nvme0n1"]', 'devices = ["sw0"]', f"{ETL}.devices[0]: 'sw0' is a switch, not a device"),
    ],
    ids=["numa-index-twice", "nvme-under-gpu", "numa-under-numa", "rc-under-switch",
         "alias-twice", "alias-is-an-id", "id-is-an-alias", "flow-cpu-cpu", "flow-one-device", "flow-to-switch",
         "flow-from-numa", "flow-to-rc", "device-switch"],
)  # fmt: skip
def test_a_pcie_tree_or_flow_that_is_nonsense(old: str, new: str, says: str) -> None:
    """Were: taken as given, and run (a drive behind a GPU, two NUMA nodes of one index, one name
    for two drives, a flow from host memory to host memory or into a switch)."""
    problems = refused(edited((old, new)))
    assert says in [p[: len(says)] for p in problems], problems


def test_a_level_of_the_tree_may_be_skipped_as_the_daemons_readers_skip_it() -> None:
    """A device alone on its root port hangs off its NUMA node in the daemon's trees
    (controller/topology.py), which `scenario from-trace` writes as scenarios."""
    text = edited(('kind = "nvme", parent = "sw0"', 'kind = "nvme", parent = "numa0"'))
    assert parse_scenario(text, "s.toml").hosts[0].topology.node("nvme0").parent == "numa0"


def test_from_trace_gives_numa_groups_of_unknown_index_indexes_of_their_own() -> None:
    """The daemon's readers make a NUMA group of no index where sysfs knows none; from-trace wrote
    index 0 for each, which a scenario now refuses beside a numa0."""
    from fsm.topology import HOST_ID, Node, NodeKind, Topology
    from replay.fromtrace import _nodes

    topo = Topology(
        (
            Node(HOST_ID, NodeKind.HOST, None),
            Node("numa0", NodeKind.NUMA, HOST_ID, numa=0),
            Node("numa-group0", NodeKind.NUMA, HOST_ID),
            Node("numa-group1", NodeKind.NUMA, HOST_ID),
        )
    )
    assert [ln for ln in _nodes(topo, {}) if ln.startswith("index")] == ["index = 0", "index = 1", "index = 2"]


# -- a request trace that is not a file ----------------------------------------------------------
@pytest.mark.parametrize(
    ("trace", "says"),
    [
        ("{tmp}", "{tmp}: a directory, not a file"),
        ("/dev/null", "/dev/null: a character device, not a file"),
        ("sub", "{tmp}/sub: a directory, not a file"),
        ("nowhere.csv", "no such file"),
        ("", "String should have at least 1 character"),
    ],
    ids=["absolute-directory", "dev-null", "relative-directory", "missing", "empty"],
)
def test_a_request_trace_that_is_not_a_file_says_what_it_is(
    trace: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "no such file" for a directory or /dev/null, which are there."""
    (tmp_path / "sub").mkdir()
    f = tmp_path / "s.toml"
    named = trace.format(tmp=tmp_path)
    f.write_text(edited(("rate = 50, compute_ms = 5, bytes = 1e6", f'trace = "{named}", compute_ms = 5')))
    assert main(["replay", str(f), "--jobs", "1", "--policies", "static"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tailguard replay: {f}: {LLM}.requests.trace: {says.format(tmp=tmp_path)}"), err


# -- [scenario.paper.POLICY] ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("[scenario.paper.fulll]\np99_ms = 16.5", "scenario.paper.fulll: no such policy; the runner's: static, "
         "guards-only, placement-only, mig-only, full"),
        ("[scenario.paper.full]\np50_ms = 3.0", "scenario.paper.full.p50_ms: unknown figure; the report prints "
         "p99_ms, violation_rate"),
        ("[scenario.paper.full]\nviolation_rate = 11.1", "scenario.paper.full.violation_rate: must lie in 0-1 (got "
         "11.1)"),
        ("[scenario.paper.static]\np99_ms = -1", "scenario.paper.static.p99_ms: must lie in 0-3600000"),
    ],
    ids=["policy", "figure", "rate-percent", "negative-p99"],
)  # fmt: skip
def test_a_paper_figure_of_no_policy_the_runner_knows(table: str, says: str) -> None:
    """Was: any policy name and any figure taken, and never printed (the report looks up the
    runner's policies and p99_ms, violation_rate)."""
    problems = refused(edited(("[[hosts]]\n", f"{table}\n\n[[hosts]]\n")))
    assert problems == [says] or problems[0].startswith(says), problems


def test_the_bundled_paper_figures_are_taken() -> None:
    from replay.scenario import load_scenario

    assert load_scenario("paper-p4d").meta.paper["full"]["p99_ms"] == 16.5
