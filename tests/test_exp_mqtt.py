"""The MQTT bridge against a real mosquitto: latency ingest reaches the decision core, malformed
payloads are dropped and counted, the control topic is off unless configured, and a broker restart
mid-run loses no more than the bounded queue while the loop keeps ticking."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
from fakes.daemon_fakes import Mosquitto, ToyHost

from controller.daemon import Daemon, DaemonOptions
from controller.exporters.mqtt import MAX_PAYLOAD_BYTES, MqttBridge, MqttOptions, parse_latency, parse_pushed
from fsm.decide import Decision, decide
from fsm.desired import DecisionEvent
from fsm.observation import Observation
from fsm.spec import HostSpec
from fsm.state import ControllerState


@pytest.fixture
def broker(tmp_path: Path) -> Mosquitto:
    b = Mosquitto(tmp_path).start()
    yield b  # type: ignore[misc]
    b.stop()


def test_parse_latency_accepts_the_documented_forms_and_names_problems() -> None:
    assert parse_latency(b"0.012") == [0.012]
    assert parse_latency(b"[0.01, 0.02]") == [0.01, 0.02]
    assert parse_latency(b'{"latency_s": [0.01], "t": 5}') == [0.01]
    for bad, msg in [
        (b"\xff", "not JSON"),
        (b"nope", "not JSON"),
        (b"[]", "1 to"),
        (b'"x"', "not a finite"),
        (b"-1", "outside"),
        (b"NaN", "not a finite"),
        (b'{"p99": 1}', "unknown keys"),
        (b"true", "not a finite"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_latency(bad)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b'{"latency_s": [0.01], "latency_s": [9.5]}', "not JSON: key 'latency_s' given twice in one object"),
        (b'{"count": 5, "over_slo": 0, "over_slo": 5}', "not JSON: key 'over_slo' given twice in one object"),
    ],
    ids=["samples", "counts"],
)
def test_a_pushed_payload_with_a_key_twice_is_malformed(payload: bytes, says: str) -> None:
    """Found by fuzzing: the last value was ingested (9.5 s, or all five requests over the SLO)."""
    with pytest.raises(ValueError, match=f"^{says}$"):
        parse_pushed(payload)


def test_a_payload_past_its_byte_limit_is_refused_before_it_is_parsed() -> None:
    """Found by hunting: an 8 MB array was parsed on the event loop (twice, 0.5 s) before its
    2,000,000 samples were refused; a broker passes up to 256 MB. 10,000 samples fit the limit."""
    big = b"[" + b",".join([b"0.1"] * 2_000_000) + b"]"
    with pytest.raises(ValueError, match=f"^a payload of {len(big)} bytes \\(at most {MAX_PAYLOAD_BYTES}\\)$"):
        parse_pushed(big)
    with pytest.raises(ValueError, match="at most"):
        parse_latency(b" " * MAX_PAYLOAD_BYTES + b"1")
    most = json.dumps([0.123456789012345678] * 10_000, indent=8).encode()
    assert len(most) <= MAX_PAYLOAD_BYTES and len(parse_pushed(most)) == 10_000  # type: ignore[arg-type]


async def _until(cond: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_latency_ingest_malformed_payloads_and_control(broker: Mosquitto) -> None:
    seen: list[Observation] = []

    def spy(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        seen.append(obs)
        return decide(state, obs, spec)

    async def main(control: bool) -> tuple[Daemon, MqttBridge]:
        host = ToyHost()
        d = Daemon(host, DaemonOptions(host_name="h1", period_s=0.05), decide_fn=spy)
        opts = MqttOptions(url=broker.url, host_name="h1", control_topic=control, backoff_min_s=0.1)
        bridge = MqttBridge(opts, on_latency=d.push_latency, on_control=d.control, on_history=d.push_history)
        d.exporters.append(bridge)
        bridge.start()
        task = asyncio.create_task(d.run())
        await _until(lambda: bridge.stats.connected)
        await asyncio.sleep(0.2)  # subscriptions in place
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="tenant") as c:
            # with the service's history: 1,040 served since it started 10 minutes ago
            pushed = {"latency_s": [0.25] * 40, "served_total": 1040, "started_at": time.time() - 600}
            await c.publish("tailguard/h1/latency/llm", json.dumps(pushed), qos=1)
            await c.publish("tailguard/h1/latency/llm", b"garbage", qos=1)
            await c.publish("tailguard/h1/latency/llm", b"[1e9]", qos=1)
            await c.publish("tailguard/h1/latency/ghost", b"0.1", qos=1)
            await c.publish("tailguard/h1/control", b"pause", qos=1)
            await _until(lambda: sum(bridge.stats.malformed_total.values()) >= 3)
            await _until(lambda: any(o.tenants["llm"].latency and o.tenants["llm"].latency.count == 40 for o in seen))
            await asyncio.sleep(0.3)
        d.request_stop()
        await task
        await bridge.stop()
        return d, bridge

    d, bridge = asyncio.run(main(control=False))
    hit = next(o for o in seen if o.tenants["llm"].latency and o.tenants["llm"].latency.count == 40)
    lat = hit.tenants["llm"].latency
    assert lat is not None and lat.quantile(0.99) == pytest.approx(0.25)
    ts = hit.tenants["llm"]
    assert ts.served_total == 1040 and ts.uptime_s is not None and 600 <= ts.uptime_s < 660
    assert bridge.stats.ingested_samples_total == 40
    assert bridge.stats.malformed_total == {"latency_payload": 2, "unknown_tenant": 1}
    assert not d.paused  # control topic off by default: "pause" was ignored
    assert bridge.stats.control_total == 0
    seen.clear()
    d2, bridge2 = asyncio.run(main(control=True))
    assert d2.paused and bridge2.stats.control_total == 1


def test_broker_restart_loses_at_most_the_bounded_queue_and_the_loop_keeps_ticking(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # Persistence on, so the subscriber's session (clean_session=False) survives the restart and
    # every message the broker accepted reaches it: what is missing was lost by tailguard.
    broker.stop()
    conf = broker.conf.read_text().replace("persistence false", f"persistence true\npersistence_location {tmp_path}/")
    broker.conf.write_text(conf)
    broker.start()
    period = 0.05
    queue_max = 8

    def one_event_per_tick(state: ControllerState, obs: Observation, spec: HostSpec) -> Decision:
        d = decide(state, obs, spec)
        ev = DecisionEvent(
            seq=int(obs.t),
            t=obs.t,
            tenant="llm",
            kind="hold",
            level_from="steady",
            level_to="steady",
            reason="test marker",
        )
        return replace(d, events=(ev,))

    async def main() -> tuple[Daemon, MqttBridge, set[int], int, int]:
        got: set[int] = set()

        async def subscriber() -> None:
            while True:
                try:
                    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="sub", clean_session=False) as c:
                        await c.subscribe("tailguard/h1/events", qos=1)
                        async for m in c.messages:
                            assert isinstance(m.payload, bytes)
                            got.add(json.loads(m.payload)["seq"])
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.1)

        sub = asyncio.create_task(subscriber())
        host = ToyHost()
        d = Daemon(host, DaemonOptions(host_name="h1", period_s=period), decide_fn=one_event_per_tick)
        bridge = MqttBridge(
            MqttOptions(url=broker.url, host_name="h1", queue_max=queue_max, backoff_min_s=0.2, backoff_max_s=0.5),
            on_latency=d.push_latency,
        )
        d.exporters.append(bridge)
        bridge.start()
        task = asyncio.create_task(d.run())
        await _until(lambda: bridge.stats.connected and len(got) > 5)
        ticks_before = d.snapshot.ticks_total
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1.5)  # ~30 ticks, ~30 events, against a queue of 8
        ticks_down = d.snapshot.ticks_total - ticks_before
        await asyncio.to_thread(broker.start)
        await _until(lambda: bridge.stats.connects_total >= 2, timeout=15)
        await asyncio.sleep(0.5)
        d.request_stop()
        await task
        await bridge.stop()
        await asyncio.sleep(0.5)
        sub.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sub
        return d, bridge, got, ticks_down, d.snapshot.ticks_total

    d, bridge, got, ticks_down, total = asyncio.run(main())
    produced = set(range(1000, 1000 + 2 * total, 2))  # ToyPlant: t starts at 1000, 2 s per tick
    missing = produced - got
    # The loop never waited on the broker: it kept ticking on schedule while it was away.
    assert ticks_down >= 0.6 * 1.5 / period, ticks_down
    assert d.snapshot.overruns_total <= 2
    # Lost: only what the bounded queue dropped (oldest first), nothing else.
    assert bridge.stats.dropped_total > 0
    # (+1: the message the broker was delivering to the subscriber when it was killed may be lost
    # on the broker's side; tailguard only forgets a message once the broker acknowledged it.)
    assert len(missing) <= bridge.stats.dropped_total + 1, (len(missing), bridge.stats.dropped_total)
    assert len(missing) >= bridge.stats.dropped_total - 1  # a dropped message never arrives (+1 in flight)
    assert max(got) == max(produced)  # the newest events made it


@pytest.mark.parametrize("payload", [b"\x1cenforce\x1f", b"\xc2\xa0enforce", b"enforce\xe2\x80\x83", b"\xc2\x85pause"])
def test_a_control_verb_wrapped_in_other_spaces_is_not_acted_on(payload: bytes) -> None:
    """Found by fuzzing: str.strip() took \\x1c-\\x1f, U+0085 and the Unicode spaces as whitespace, so
    each of these reached the handler as a plain verb. Only ASCII space, tab and line ends go."""
    seen: list[str] = []

    def control(cmd: str) -> str:
        if cmd not in ("enforce", "pause"):
            raise ValueError(f"unknown command {cmd!r}")
        seen.append(cmd)
        return cmd

    bridge = MqttBridge(MqttOptions(url="mqtt://127.0.0.1:1", host_name="h1"), on_control=control)
    bridge._control(payload)
    bridge._control(b" enforce\r\n")
    assert seen == ["enforce"] and bridge.stats.malformed_total.get("control") == 1
