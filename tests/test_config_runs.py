"""What `check-config` accepts, `run` can use (found by a fuzzer that ran every accepted config):
a URL the connect-time parsers refuse, an MQTT password file that is not text, a CA file that is
not PEM, a state directory too long a path for the files in it, a release burn that underflowed
the evidence's log-likelihood. Each is now a config error naming the key, or works."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from controller.config import ConfigError, check_loaded, parse_config, url_problem
from controller.config_files import read_mqtt_password
from fsm.decide import decide
from fsm.evidence import llr_weights
from fsm.examples import example_observation, example_spec
from fsm.spec import Policy
from fsm.state import ControllerState

SENS = (
    '[[tenants]]\nname = "llm"\nrole = "sensitive"\nslo_ms = 100\n'
    '[tenants.latency]\nkind = "prometheus"\nurl = "{url}"\n'
)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://[::1", "not a URL (Invalid IPv6 URL)"),
        ("http://a..b/metrics", "host 'a..b' is not a host name"),
        ("http://" + "ü" * 70 + ":9/m", "is not a host name (labels of 1-63 characters)"),
        ("http://localhost:9/ü", "only ASCII after the host"),
        ("http://h:99999/m", "Port out of range"),
        ("http://h:0/m", "port 0 is not a port to connect to"),
        ("ftp://h/m", "expected http:// or https://HOST[:PORT][/PATH]"),
    ],
)
def test_a_latency_url_the_sampler_could_not_fetch_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(SENS.format(url=url))
    assert any("tenants[0](llm).latency.url" in p and says in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mqtt://[x:9", "Invalid IPv6 URL"),
        ("mqtt://u@:9", "expected mqtt:// or mqtts://HOST[:PORT]"),
        ("mqtt://h:1883/topic", "without a path"),
        ("mqtt://" + "x" * 64 + ".example", "is not a host name"),
    ],
)
def test_an_mqtt_url_the_client_could_not_connect_to_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f'[exporters.mqtt]\nenabled = true\nurl = "{url}"\n')
    assert any("exporters.mqtt.url" in p and says in p for p in e.value.problems), e.value.problems


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9400/metrics", "http://[::1]:9400/metrics", "https://dcgm.example/m?x=1"]
)
def test_the_urls_people_write_are_fine(url: str) -> None:
    assert url_problem(url, ("http", "https")) is None
    assert url_problem("mqtts://broker.example", ("mqtt", "mqtts"), path=False) is None


def test_an_mqtt_password_file_that_is_not_text_is_refused_by_check_config_run_and_doctor(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xffsecret\n")
    with pytest.raises(OSError, match=r"not UTF-8 text"):
        read_mqtt_password(str(pw))  # what `run` and `doctor` call
    cfg = parse_config(f'[exporters.mqtt]\nenabled = true\nusername = "u"\npassword_file = "{pw}"\n')
    with pytest.raises(ConfigError, match=r"exporters\.mqtt\.password_file: password file .*: not UTF-8 text"):
        check_loaded(cfg, "c.toml")
    pw.write_text("secret\n")
    assert read_mqtt_password(str(pw)) == "secret"
    pw.write_text(" \n")  # found by fuzzing: accepted, and the broker sent an empty password
    with pytest.raises(
        ConfigError, match=r"exporters\.mqtt\.password_file: password file .*: empty: no password in it"
    ):
        check_loaded(cfg, "c.toml")


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    cfg = parse_config(f'[exporters.mqtt]\nenabled = true\nurl = "mqtts://127.0.0.1"\ntls_ca = "{ca}"\n')
    with pytest.raises(ConfigError, match=r"exporters\.mqtt\.tls_ca: CA file .*: not PEM CA certificates"):
        check_loaded(cfg, "c.toml")


def test_a_state_dir_too_long_for_the_files_in_it_is_refused(tmp_path: Path) -> None:
    long = "/".join(["d" * 200] * 20)  # every name under NAME_MAX, the whole past PATH_MAX
    cfg = parse_config(f'[host]\nstate_dir = "{tmp_path}/{long}"\n')
    with pytest.raises(ConfigError, match=r"host\.state_dir: \d+ bytes long: .* 4096-byte path limit"):
        check_loaded(cfg, "c.toml")


def test_the_smallest_release_burn_keeps_the_evidence_finite() -> None:
    # 0.01 x 5e-324 (the config's release_burn > 0 allows it) underflowed to 0: log(0) raised in
    # every tick of the daemon
    assert all(math.isfinite(w) for w in llr_weights(0.01, 5e-324))
    spec = example_spec(Policy(release_burn=5e-324))
    state = ControllerState()
    for i in range(30):
        state = decide(state, example_observation(2.0 * i, 0.030 if i > 10 else 0.010, 3e9), spec).state


def test_an_slo_too_small_to_be_a_latency_is_refused() -> None:
    # 5e-324 ms passed "> 0" and became an SLO of 0 s
    with pytest.raises(ConfigError, match=r"tenants\[0\]\(llm\)\.slo_ms"):
        parse_config(SENS.format(url="http://127.0.0.1:8000/metrics").replace("slo_ms = 100", "slo_ms = 5e-324"))
