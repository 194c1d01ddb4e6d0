"""The MQTT bridge (aiomqtt): state, events and latency ingest; the loop never waits on the broker.

Topics (HOST = host.name):
- `tailguard/HOST/state`            retained JSON, the latest per-tick summary (QoS 1);
- `tailguard/HOST/events`           one JSON message per decision, with its evidence (QoS 1);
- `tailguard/HOST/latency/TENANT`   ingest: a tenant pushes its request latencies in seconds, as a
                                    number, a list of numbers, or {"latency_s": number | list}; or,
                                    when its service counts them itself, {"count": N, "over_slo": M}
                                    (requests completed, and how many of them were over its SLO);
                                    either object may carry the service's history, "served_total"
                                    (requests completed since it started, this message's included)
                                    with "started_at" (its start, Unix seconds);
- `tailguard/HOST/control`          only when configured: pause | resume | dry-run | enforce.

The loop hands messages over with `on_tick` / `on_events`, which only append to a bounded deque:
when the broker is away the oldest messages are dropped and counted. Only the newest state is
kept (it is retained, older ones are worthless). A background task connects, publishes and
listens, reconnecting with exponential backoff. Malformed incoming payloads are dropped and
counted, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiomqtt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controller.exporters.snapshot import Snapshot
from controller.signals.latency import MAX_LATENCY_S, UNIX_SECONDS_RANGE
from controller.status import status_json
from fsm.codec import encode
from fsm.desired import DecisionEvent
from schema.jsontext import finite_float, loads_json, shown

log = logging.getLogger("tailguard.mqtt")

MAX_SAMPLES_PER_MESSAGE = 10_000
MAX_COUNT_PER_MESSAGE = 10_000_000
# 10,000 samples at 100 bytes each, spaces included: a broker passes up to 256 MB, and 8 MB of JSON
# took 0.25 s to parse on the event loop (twice) before its sample count was refused.
MAX_PAYLOAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PushedCounts:
    """A tenant's own tally for a window: requests completed, and how many were over its SLO."""

    count: int
    over_slo: float


@dataclass(frozen=True, slots=True)
class PushedHistory:
    """What a pushing service has served since it started: its cumulative count of completed
    requests (the message's own included) and its start in Unix seconds. The decision core seeds
    the tenant's usual rate with it, as it does with a Prometheus scrape's cumulative count and
    process_start_time_seconds (TenantSample.served_total, uptime_s)."""

    served_total: float
    started_at: float


HISTORY_KEYS = frozenset({"served_total", "started_at"})
MAX_SERVED_TOTAL = 1e15


@dataclass(slots=True)
class MqttOptions:
    url: str = "mqtt://127.0.0.1:1883"
    host_name: str = "localhost"
    queue_max: int = 1000
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    latency_ingest: bool = True
    control_topic: bool = False
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    keepalive_s: int = 30
    state_every_s: float = 5.0  # retained state at most this often, and at once after a decision


@dataclass(slots=True)
class MqttStats:
    connected: bool = False
    connects_total: int = 0
    connect_failures_total: int = 0
    published_total: int = 0
    dropped_total: int = 0
    malformed_total: dict[str, int] = field(default_factory=dict)  # reason -> n
    ingested_samples_total: int = 0
    ingested_counts_total: int = 0  # requests reported through {count, over_slo} messages
    control_total: int = 0


def parse_url(url: str) -> tuple[str, int, bool]:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ValueError(f"MQTT url {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = u.scheme == "mqtts"
    return u.hostname, u.port or (8883 if tls else 1883), tls


def _json(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a payload of {len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})")
    try:
        return loads_json(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None


def parse_push(payload: bytes) -> tuple[list[float] | PushedCounts, PushedHistory | None]:
    """Latency samples or a {count, over_slo} tally, and the service's history where the message
    carries one; ValueError says what was wrong (the whole message is refused)."""
    data = _json(payload)
    if isinstance(data, dict) and "count" in data:
        counts = _counts(data)
        return counts, _history(data, counts.count)
    samples = _latency(data)
    return samples, _history(data, len(samples)) if isinstance(data, dict) else None


def parse_pushed(payload: bytes) -> list[float] | PushedCounts:
    """Either latency samples or a {count, over_slo} tally; ValueError says what was wrong."""
    return parse_push(payload)[0]


def _history(data: dict[str, Any], counted: int) -> PushedHistory | None:
    """{served_total, started_at}, both or neither; `counted`: the message's own requests, which
    served_total includes."""
    have = HISTORY_KEYS & set(data)
    if not have:
        return None
    if have != HISTORY_KEYS:
        raise ValueError(f"{sorted(have)[0]} without {sorted(HISTORY_KEYS - have)[0]}: the two go together")
    served, start = data["served_total"], data["started_at"]
    v = finite_float(served) if not isinstance(served, bool) else None
    if v is None or not 0 <= v <= MAX_SERVED_TOTAL:
        raise ValueError(f"served_total {shown(served)}: expected a number from 0 to {MAX_SERVED_TOTAL:g}")
    if v < counted:
        raise ValueError(f"served_total {shown(served)} below the message's own {counted} requests")
    lo, hi = UNIX_SECONDS_RANGE
    t = finite_float(start) if not isinstance(start, bool) else None
    if t is None or not lo <= t <= hi:
        raise ValueError(f"started_at {shown(start)}: expected Unix seconds from {lo:g} to {hi:g}")
    return PushedHistory(v, t)


def _counts(data: dict[str, Any]) -> PushedCounts:
    extra = set(data) - {"count", "over_slo", "t"} - HISTORY_KEYS
    if extra:
        raise ValueError(f"unknown keys {sorted(extra)}")
    if "over_slo" not in data:
        raise ValueError("missing over_slo")
    n, over = data["count"], data["over_slo"]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_COUNT_PER_MESSAGE:
        raise ValueError(f"count {n!r}: expected a whole number from 0 to {MAX_COUNT_PER_MESSAGE}")
    if finite_float(over) is None:
        raise ValueError(f"over_slo {shown(over)}: expected a finite number")
    if not 0 <= over <= n:
        raise ValueError(f"over_slo {over!r} outside [0, count = {n}]")
    return PushedCounts(n, float(over))


def parse_latency(payload: bytes) -> list[float]:
    """Latency samples (seconds) from a pushed payload; ValueError says what was wrong."""
    return _latency(_json(payload))


def _latency(data: Any) -> list[float]:
    if isinstance(data, dict):
        extra = set(data) - {"latency_s", "t"} - HISTORY_KEYS
        if extra:
            raise ValueError(f"unknown keys {sorted(extra)}")
        if "latency_s" not in data:
            raise ValueError("missing latency_s")
        data = data["latency_s"]
    values = data if isinstance(data, list) else [data]
    if not values or len(values) > MAX_SAMPLES_PER_MESSAGE:
        raise ValueError(f"expected 1 to {MAX_SAMPLES_PER_MESSAGE} samples, got {len(values)}")
    out = []
    for v in values:
        if finite_float(v) is None:
            raise ValueError(f"not a finite number: {shown(v)}")
        if not 0 <= v <= MAX_LATENCY_S:
            raise ValueError(f"latency {v!r} s outside [0, {MAX_LATENCY_S:g}]")
        out.append(float(v))
    return out


class MqttBridge:
    def __init__(
        self,
        opts: MqttOptions,
        on_latency: Callable[[str, list[float]], bool] | None = None,
        on_control: Callable[[str], str] | None = None,
        on_counts: Callable[[str, int, float], bool] | None = None,
        on_history: Callable[[str, float, float], bool] | None = None,
    ) -> None:
        self.opts = opts
        self.hostname, self.port, url_tls = parse_url(opts.url)
        self.tls = opts.tls or url_tls
        self.on_latency = on_latency
        self.on_control = on_control
        self.on_counts = on_counts
        self.on_history = on_history
        self.prefix = f"tailguard/{opts.host_name}"
        self.stats = MqttStats()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._state: bytes | None = None
        self._state_at = -math.inf
        self._state_events = -1
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- called by the loop: never block ---------------------------------------------------------
    def on_tick(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if snap.events_total == self._state_events and now - self._state_at < self.opts.state_every_s:
            return
        self._state_at, self._state_events = now, snap.events_total
        self._state = json.dumps(status_json(snap, self.opts.state_every_s), sort_keys=True).encode()
        self._wake.set()

    def on_events(self, events: tuple[DecisionEvent, ...]) -> None:
        for e in events:
            self._enqueue(f"{self.prefix}/events", json.dumps({"host": self.opts.host_name, **encode(e)}).encode())
        self._wake.set()

    def _enqueue(self, topic: str, payload: bytes) -> None:
        if len(self._queue) >= self.opts.queue_max:
            self._queue.popleft()
            self.stats.dropped_total += 1
        self._queue.append((topic, payload))

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the background task -------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt")

    async def stop(self, flush_s: float = 2.0) -> None:
        if self._task is None:
            return
        # Give a connected bridge a moment to send what is queued (the last events, final state).
        if self.stats.connected:
            loop = asyncio.get_running_loop()
            end = loop.time() + flush_s
            while (self._queue or self._state is not None) and loop.time() < end:
                await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None

    async def probe(self, timeout_s: float) -> None:
        """Connect once and disconnect (`tailguard doctor`). Under its own client id: the daemon's
        id would make the broker drop the running daemon's session. Raises MqttError / OSError."""
        import os

        ident = f"tailguard-doctor-{self.opts.host_name}-{os.getpid()}"
        async with asyncio.timeout(timeout_s):
            async with self._client(ident, timeout_s):
                pass

    def _client(self, identifier: str | None = None, timeout_s: float = 5.0) -> aiomqtt.Client:
        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(ca_certs=self.opts.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        return aiomqtt.Client(
            self.hostname,
            self.port,
            username=self.opts.username,
            password=self.opts.password,
            identifier=identifier or f"tailguard-{self.opts.host_name}",
            keepalive=self.opts.keepalive_s,
            tls_params=tls_params,
            timeout=timeout_s,
        )

    async def _run(self) -> None:
        backoff = self.opts.backoff_min_s
        while True:
            try:
                async with self._client() as client:
                    self.stats.connected = True
                    self.stats.connects_total += 1
                    backoff = self.opts.backoff_min_s
                    log.info("MQTT connected to %s:%d", self.hostname, self.port)
                    if self.opts.latency_ingest:
                        await client.subscribe(f"{self.prefix}/latency/+", qos=1)
                    if self.opts.control_topic:
                        await client.subscribe(f"{self.prefix}/control", qos=1)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._sender(client))
                        tg.create_task(self._receiver(client))
            except asyncio.CancelledError:
                self.stats.connected = False
                raise
            except (aiomqtt.MqttError, OSError, ExceptionGroup) as e:
                if self.stats.connected:
                    log.warning("MQTT connection lost: %s", _reason(e))
                else:
                    self.stats.connect_failures_total += 1
                    log.warning("MQTT connect to %s:%d failed: %s", self.hostname, self.port, _reason(e))
            self.stats.connected = False
            # Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(self.opts.backoff_max_s, backoff * 2)

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                topic, payload = self._queue[0]
                await client.publish(topic, payload, qos=1)
                self._queue.popleft()  # only once the broker has it (lost connection: kept)
                self.stats.published_total += 1
            state = self._state
            if state is not None:
                await client.publish(f"{self.prefix}/state", state, qos=1, retain=True)
                if self._state is state:
                    self._state = None
                self.stats.published_total += 1

    async def _receiver(self, client: aiomqtt.Client) -> None:
        lat_prefix = f"{self.prefix}/latency/"
        async for msg in client.messages:
            topic = msg.topic.value
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            if topic.startswith(lat_prefix):
                self._ingest(topic[len(lat_prefix) :], payload)
            elif topic == f"{self.prefix}/control" and self.opts.control_topic:
                self._control(payload)

    def _malformed(self, reason: str, detail: str) -> None:
        self.stats.malformed_total[reason] = self.stats.malformed_total.get(reason, 0) + 1
        log.info("dropped malformed MQTT message (%s): %s", reason, detail)

    def _ingest(self, tenant: str, payload: bytes) -> None:
        try:
            pushed, history = parse_push(payload)
        except ValueError as e:
            self._malformed("latency_payload", f"tenant {tenant}: {e}")
            return
        if isinstance(pushed, PushedCounts):
            if self.on_counts is None or not self.on_counts(tenant, pushed.count, pushed.over_slo):
                self._malformed("unknown_tenant", f"latency counts for unknown tenant {tenant!r}")
                return
            self.stats.ingested_counts_total += pushed.count
        else:
            if self.on_latency is None or not self.on_latency(tenant, pushed):
                self._malformed("unknown_tenant", f"latency for unknown tenant {tenant!r}")
                return
            self.stats.ingested_samples_total += len(pushed)
        if history is not None and self.on_history is not None:
            self.on_history(tenant, history.served_total, history.started_at)  # a known tenant: its window was taken

    def _control(self, payload: bytes) -> None:
        # ASCII whitespace only: str.strip() also takes \x1c-\x1f, U+0085 and the Unicode spaces,
        # so "\x1cenforce\x1f" was acted on as "enforce"
        cmd = payload.decode("utf-8", "replace").strip(" \t\r\n")
        try:
            if self.on_control is None:
                raise ValueError("no control handler")
            self.on_control(cmd)
        except ValueError as e:
            self._malformed("control", str(e))
            return
        self.stats.control_total += 1

    # -- Prometheus --------------------------------------------------------------------------------
    def metrics(self) -> Iterator[Metric]:
        st = self.stats
        yield GaugeMetricFamily("tailguard_mqtt_connected", "1 while connected to the broker.", float(st.connected))
        yield GaugeMetricFamily("tailguard_mqtt_queued_messages", "Messages waiting for the broker.", self.queued)
        yield CounterMetricFamily("tailguard_mqtt_connects", "Successful broker connections.", st.connects_total)
        yield CounterMetricFamily(
            "tailguard_mqtt_connect_failures", "Failed broker connection attempts.", st.connect_failures_total
        )
        yield CounterMetricFamily("tailguard_mqtt_published_messages", "Messages the broker took.", st.published_total)
        yield CounterMetricFamily(
            "tailguard_mqtt_dropped_messages", "Outgoing messages dropped (queue full).", st.dropped_total
        )
        mal = CounterMetricFamily(
            "tailguard_mqtt_malformed_messages", "Incoming messages dropped as malformed.", labels=["reason"]
        )
        for reason in ("latency_payload", "unknown_tenant", "control"):
            mal.add_metric([reason], st.malformed_total.get(reason, 0))
        yield mal
        yield CounterMetricFamily(
            "tailguard_mqtt_ingested_latency_samples", "Latency samples tenants pushed.", st.ingested_samples_total
        )
        yield CounterMetricFamily(
            "tailguard_mqtt_ingested_latency_counts",
            "Requests tenants reported as {count, over_slo} tallies.",
            st.ingested_counts_total,
        )


def _reason(e: BaseException) -> str:
    if isinstance(e, ExceptionGroup):
        return "; ".join(_reason(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"
