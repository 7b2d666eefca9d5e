"""The SDK's metrics through the OpenTelemetry metrics API, read from the OpenTelemetry SDK's
``InMemoryMetricReader`` after real traffic on a real server (and the Prometheus endpoint,
scraped over HTTP, still counting the same).

Each test gives eventwire a fresh ``MeterProvider`` (``eventwire.use_meter_provider``: the
global provider can be set only once per process), so its data points are exactly what the
test's own traffic produced.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)
from prometheus_client.parser import text_string_to_metric_families

import eventwire
from eventwire import Event, InvalidArgument, KnowledgeShared, RetryPolicy
from eventwire import Unprocessable as UnprocessableError
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.metrics.export import Metric

FAST = RetryPolicy(max_deliveries=3, initial_delay=0.05, jitter=0.0)
TYPE = KnowledgeShared.event_type
NATS = {"messaging.system": "nats"}
SENT = NATS | {"messaging.operation.name": "publish", "cloudevents.event_type": TYPE}
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
Attributes = frozenset[tuple[str, Any]]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    eventwire.use_meter_provider(provider)
    yield memory
    eventwire.use_meter_provider(None)
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """The metrics of the meter ``eventwire``, by name (none: no data point at all)."""
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "eventwire"
        for metric in scope.metrics
    }


def values(metric: Metric) -> dict[Attributes, float]:
    """A counter's or gauge's value per attribute set."""
    assert isinstance(metric.data, Sum | Gauge)
    points = metric.data.data_points
    assert all(isinstance(p, NumberDataPoint) for p in points)
    return {frozenset((p.attributes or {}).items()): p.value for p in points}


def histogram(metric: Metric) -> dict[Attributes, HistogramDataPoint]:
    assert isinstance(metric.data, Histogram)
    return {frozenset((p.attributes or {}).items()): p for p in metric.data.data_points}


def attrs(**found: Any) -> Attributes:
    return frozenset(found.items())


@dataclass
class Traffic:
    consumer: str


async def traffic(bus: eventwire.Bus) -> Traffic:
    """Four events published (one signed by a key the bus does not trust: refused), one
    handled, one failing once then handled (retried), one dead-lettered as unprocessable;
    then the bus's health (the gauges) with an open circuit, and the agents' health."""
    alice = make_identity("alice", bus.keyring)
    mallory = make_identity("mallory")
    failed_once: set[str] = set()

    async def handle(event: Event) -> None:
        content = event.parse(KnowledgeShared).content
        if content == "bad":
            raise UnprocessableError("never")
        if content == "flaky" and content not in failed_once:
            failed_once.add(content)
            raise RuntimeError("first time")

    async with bus.subscribe("knowledge.>", handle, durable="otel", retry=FAST) as sub:
        for content in ("fine", "flaky", "bad"):
            await bus.publish(KnowledgeShared(topic="m", content=content), identity=alice)
        await bus.publish(KnowledgeShared(topic="m", content="forged"), identity=mallory)
        await wait_until(
            lambda: (sub.stats.handled, sub.stats.dead_lettered, sub.stats.rejected) == (2, 1, 1)
        )
        for _ in range(5):
            bus.breakers.breaker("gone").record_failure()
        await _acked(bus, sub.durable)
        await bus.health()
        await eventwire.agents_health(bus)
    return Traffic(sub.durable)


async def _acked(bus: eventwire.Bus, durable: str) -> None:
    """Until the server has every ack of the consumer (the gauges are then exact)."""
    info = bus.jetstream.consumer_info
    async with asyncio.timeout(10):
        while (await info(bus.stream, durable)).num_ack_pending:  # noqa: ASYNC110 - server state
            await asyncio.sleep(0.01)


async def test_every_metric_is_read_from_the_in_memory_reader(
    bus: eventwire.Bus, reader: InMemoryMetricReader
) -> None:
    done = await traffic(bus)
    found = collect(reader)
    group = NATS | {"messaging.operation.name": "process"}
    consumer = {"messaging.consumer.group.name": done.consumer}
    assert set(found) == {
        "messaging.client.sent.messages", "messaging.client.operation.duration",
        "messaging.client.consumed.messages", "messaging.process.duration",
        "eventwire.handler.errors", "eventwire.events.retried", "eventwire.events.refused",
        "eventwire.events.dead_lettered", "eventwire.circuit.open", "eventwire.registry.agents",
        "eventwire.consumer.pending", "eventwire.consumer.ack_pending", "eventwire.health.score",
    }  # fmt: skip
    # the messaging semantic conventions' instruments
    sent = found["messaging.client.sent.messages"]
    assert (sent.unit, values(sent)) == ("{message}", {frozenset(SENT.items()): 4})
    assert isinstance(sent.data, Sum)
    assert sent.data.is_monotonic
    publish = found["messaging.client.operation.duration"]
    point = histogram(publish)[attrs(**SENT, **{"messaging.operation.type": "send"})]
    assert (publish.unit, point.count, tuple(point.explicit_bounds)) == ("s", 4, BUCKETS)
    assert point.sum > 0
    consumed = found["messaging.client.consumed.messages"]
    assert (consumed.unit, values(consumed)) == ("{message}", {attrs(**group, **consumer): 4})
    process = found["messaging.process.duration"]
    point = histogram(process)[attrs(**group, **consumer)]
    assert (process.unit, point.count, sum(point.bucket_counts)) == ("s", 4, 4)
    # eventwire's own
    own = {name: values(found[name]) for name in found if name.startswith("eventwire.")}
    assert own["eventwire.handler.errors"] == {attrs(**consumer): 2}
    assert own["eventwire.events.retried"] == {attrs(**consumer): 1}
    assert own["eventwire.events.refused"] == {
        attrs(**{"eventwire.refusal.reason": "unknown-key"}): 1
    }
    assert own["eventwire.events.dead_lettered"] == {
        attrs(**{"eventwire.dlq.reason": "unprocessable"}): 1
    }
    assert own["eventwire.circuit.open"] == {attrs(**{"eventwire.circuit.target": "gone"}): 1}
    assert own["eventwire.registry.agents"] == {frozenset(): 0}
    pending = own["eventwire.consumer.pending"][attrs(**consumer)]
    ack_pending = own["eventwire.consumer.ack_pending"][attrs(**consumer)]
    assert (pending, ack_pending) == (0, 0)  # all settled before bus.health()
    score = own["eventwire.health.score"][
        attrs(**{"eventwire.health.subject": f"bus {TENANT}/{bus.root}"})
    ]
    assert 0 <= score < 1  # the open circuit
    units = {name: found[name].unit for name in own}
    assert units["eventwire.events.refused"] == "{event}"
    assert units["eventwire.circuit.open"] == units["eventwire.health.score"] == "1"


async def _scrape(url: str) -> dict[tuple[str, Attributes], float]:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_prometheus_endpoint_counts_the_same_traffic(
    bus: eventwire.Bus, reader: InMemoryMetricReader
) -> None:
    with eventwire.serve_metrics(0) as endpoint:
        before = await _scrape(endpoint.url)
        done = await traffic(bus)
        after = await _scrape(endpoint.url)
    found = collect(reader)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    consumer = {"messaging.consumer.group.name": done.consumer}
    group = NATS | {"messaging.operation.name": "process"} | consumer
    prometheus = {
        "published": delta("eventwire_events_published_total", type=TYPE),
        "delivered": delta("eventwire_events_delivered_total", consumer=done.consumer),
        "errors": delta("eventwire_handler_errors_total", consumer=done.consumer),
        "retried": delta("eventwire_events_retried_total", consumer=done.consumer),
        "refused": delta("eventwire_events_refused_total", reason="unknown-key"),
        "dead": delta("eventwire_events_dead_lettered_total", reason="unprocessable"),
        "runs": delta("eventwire_handler_duration_seconds_count", consumer=done.consumer),
    }
    otel = {
        "published": values(found["messaging.client.sent.messages"])[frozenset(SENT.items())],
        "delivered": values(found["messaging.client.consumed.messages"])[frozenset(group.items())],
        "errors": values(found["eventwire.handler.errors"])[frozenset(consumer.items())],
        "retried": values(found["eventwire.events.retried"])[frozenset(consumer.items())],
        "refused": sum(values(found["eventwire.events.refused"]).values()),
        "dead": sum(values(found["eventwire.events.dead_lettered"]).values()),
        "runs": histogram(found["messaging.process.duration"])[frozenset(group.items())].count,
    }
    assert prometheus == otel == {
        "published": 4, "delivered": 4, "errors": 2, "retried": 1, "refused": 1, "dead": 1,
        "runs": 4,
    }  # fmt: skip
    assert after["eventwire_circuit_open", frozenset({("target", "gone")})] == 1


async def test_another_provider_counts_from_zero_and_the_last_one_alone_reports(
    bus: eventwire.Bus,
) -> None:
    """Switching providers: the new one counts from zero and the old one reports no more
    counts; switching back to a provider used before works again (its instruments reused)."""
    alice = make_identity("alice", bus.keyring)
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    providers = MeterProvider(metric_readers=[first]), MeterProvider(metric_readers=[second])

    async def publish(n: int) -> None:
        for _ in range(n):
            await bus.publish(KnowledgeShared(topic="m", content="x"), identity=alice)

    def sent(reader: InMemoryMetricReader) -> dict[Attributes, float] | None:
        metric = collect(reader).get("messaging.client.sent.messages")
        return None if metric is None else values(metric)

    try:
        eventwire.use_meter_provider(providers[0])
        await publish(1)
        assert (sent(first), sent(second)) == ({frozenset(SENT.items()): 1}, None)
        eventwire.use_meter_provider(providers[1])
        await publish(2)
        assert (sent(first), sent(second)) == (None, {frozenset(SENT.items()): 2})
        eventwire.use_meter_provider(providers[0])
        await publish(3)
        assert (sent(first), sent(second)) == ({frozenset(SENT.items()): 3}, None)
    finally:
        eventwire.use_meter_provider(None)
        for provider in providers:
            provider.shutdown()


@pytest.mark.parametrize("provider", ["global", object(), 1, MeterProvider])
def test_anything_but_a_meter_provider_is_an_invalid_argument(provider: object) -> None:
    with pytest.raises(InvalidArgument, match="must be a MeterProvider or None") as error:
        eventwire.use_meter_provider(provider)  # type: ignore[arg-type]
    assert error.value.field == "provider"


# One interpreter per combination of extras: eventwire chooses its hooks at import.
_CHILD = """
import asyncio, json, secrets, sys
blocked = json.loads(sys.argv[2])
for name in blocked:
    sys.modules[name] = None  # unimportable: that extra is absent
import eventwire
from eventwire import ConfigError, Identity, Keyring, KnowledgeShared, Unprocessable
from eventwire import _metrics

async def traffic(url):
    alice = Identity.generate("t", "alice")

    async def handle(event):
        if event.parse(KnowledgeShared).content == "bad":
            raise Unprocessable("never")

    root = "m" + secrets.token_hex(4)
    async with eventwire.connect(url, tenant="t", root=root, keyring=Keyring.of(alice)) as bus:
        async with bus.subscribe("knowledge.>", handle, durable="plain") as sub:
            for content in ("fine", "bad"):
                await bus.publish(KnowledgeShared(topic="m", content=content), identity=alice)
            while (sub.stats.handled, sub.stats.dead_lettered) != (1, 1):
                await asyncio.sleep(0.01)

found = {"metrics": _metrics.METRICS is not None}
if "opentelemetry" in blocked:
    try:
        eventwire.use_meter_provider(None)
    except ConfigError as exc:
        found["config_error"] = str(exc)
else:  # a provider given, then back to the global one, which the application sets
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    eventwire.use_meter_provider(MeterProvider())
    eventwire.use_meter_provider(None)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
asyncio.run(traffic(sys.argv[1]))
if "opentelemetry" not in blocked:
    found["otel"] = {
        m.name: [p.count if hasattr(p, "count") else p.value for p in m.data.data_points]
        for r in reader.get_metrics_data().resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
    }
found["modules"] = sorted({
    n.split(".")[0] for n, m in sys.modules.items()
    if m is not None and n.startswith(("opentelemetry", "prometheus_client"))
})
print(json.dumps(found))
"""


def _child(url: str, blocked: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, json.dumps(blocked)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_with_only_opentelemetry_the_metrics_still_count(
    nats_server: eventwire.EmbeddedServer,
) -> None:
    """The ``otel`` extra without ``prometheus-client``: every run counted through
    OpenTelemetry's global meter provider (set after eventwire's import, as applications
    do), prometheus-client never imported."""
    found = _child(nats_server.url, ["prometheus_client"])
    assert found["metrics"] is True
    assert found["modules"] == ["opentelemetry"]
    otel = found["otel"]
    assert otel["messaging.client.sent.messages"] == [2]
    assert otel["messaging.client.consumed.messages"] == [2]
    assert otel["messaging.process.duration"] == [2]
    assert otel["eventwire.handler.errors"] == [1]
    assert otel["eventwire.events.dead_lettered"] == [1]


def test_without_either_extra_nothing_is_imported_or_counted(
    nats_server: eventwire.EmbeddedServer,
) -> None:
    found = _child(nats_server.url, ["prometheus_client", "opentelemetry"])
    assert (found["metrics"], found["modules"]) == (False, [])
    assert "pip install 'eventwire[otel]'" in found["config_error"]


def test_with_only_prometheus_use_meter_provider_is_a_config_error(
    nats_server: eventwire.EmbeddedServer,
) -> None:
    found = _child(nats_server.url, ["opentelemetry"])
    assert (found["metrics"], found["modules"]) == (True, ["prometheus_client"])
    assert "opentelemetry-api" in found["config_error"]
