"""Prometheus metrics, scraped over HTTP from ``eventwire.serve_metrics`` on a real server.

The metrics are process-wide (prometheus-client's default registry), so each test compares
a scrape before with one after, on labels only it uses (its durable name) or by deltas.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

import eventwire
from eventwire import ConfigError, Event, InvalidArgument, KnowledgeShared, RetryPolicy
from eventwire import Unprocessable as UnprocessableError
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
FAST = RetryPolicy(max_deliveries=3, initial_delay=0.05, jitter=0.0)
TYPE = KnowledgeShared.event_type


@pytest.fixture
def endpoint() -> Iterator[eventwire.MetricsServer]:
    with eventwire.serve_metrics(0) as server:
        yield server


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


async def scrape(server: eventwire.MetricsServer) -> Samples:
    content_type, text = await asyncio.to_thread(_get, server.url)
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_counters_and_latency_of_a_consumer_scraped_over_http(
    bus: eventwire.Bus, endpoint: eventwire.MetricsServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    mallory = make_identity("mallory")  # in no keyring of the bus: refused as unknown-key
    failed_once: set[str] = set()

    async def handle(event: Event) -> None:
        content = event.parse(KnowledgeShared).content
        if content == "bad":
            raise UnprocessableError("never")
        if content == "flaky" and content not in failed_once:
            failed_once.add(content)
            raise RuntimeError("first time")

    before = await scrape(endpoint)
    async with bus.subscribe("knowledge.>", handle, durable="metered", retry=FAST) as sub:
        for content in ("fine", "flaky", "bad"):
            await bus.publish(KnowledgeShared(topic="m", content=content), identity=alice)
        await bus.publish(KnowledgeShared(topic="m", content="forged"), identity=mallory)
        await wait_until(
            lambda: (sub.stats.handled, sub.stats.dead_lettered, sub.stats.rejected) == (2, 1, 1)
        )
    after = await scrape(endpoint)
    consumer = sub.durable
    assert delta(before, after, "eventwire_events_published_total", type=TYPE) == 4
    assert delta(before, after, "eventwire_publish_duration_seconds_count", type=TYPE) == 4
    assert delta(before, after, "eventwire_events_delivered_total", consumer=consumer) == 4
    assert delta(before, after, "eventwire_handler_errors_total", consumer=consumer) == 2
    assert delta(before, after, "eventwire_events_retried_total", consumer=consumer) == 1
    assert delta(before, after, "eventwire_events_refused_total", reason="unknown-key") == 1
    assert delta(before, after, "eventwire_events_dead_lettered_total", reason="unprocessable") == 1
    assert delta(before, after, "eventwire_handler_duration_seconds_count", consumer=consumer) == 4
    everything = {"consumer": consumer, "le": "+Inf"}
    assert delta(before, after, "eventwire_handler_duration_seconds_bucket", **everything) == 4
    assert delta(before, after, "eventwire_handler_duration_seconds_sum", consumer=consumer) > 0


async def test_the_endpoint_listens_on_loopback_only_and_closes(
    endpoint: eventwire.MetricsServer,
) -> None:
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
    assert endpoint.port > 0
    samples = await scrape(endpoint)
    assert any(name.startswith("eventwire_") for name, _ in samples)
    endpoint.close()
    endpoint.close()  # safe twice
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_get, endpoint.url)


@pytest.mark.parametrize("port", [-1, 65536, "9464", True, 1.5])
def test_a_bad_port_is_an_invalid_argument(port: object) -> None:
    with pytest.raises(InvalidArgument) as error:
        eventwire.serve_metrics(port)  # type: ignore[arg-type]
    assert error.value.field == "port"


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            eventwire.serve_metrics(port)


_METRICS_ONLY = """
import asyncio, json, secrets, sys
sys.modules["opentelemetry"] = None  # the otel extra absent, prometheus present
import eventwire
from eventwire import Identity, Keyring, KnowledgeShared, Unprocessable
from eventwire import _observe
from prometheus_client import REGISTRY

async def main(url):
    alice = Identity.generate("t", "alice")
    handled = []

    async def handle(event):
        handled.append(event.id)
        if event.parse(KnowledgeShared).content == "bad":
            raise Unprocessable("never")

    root = "m" + secrets.token_hex(4)
    async with eventwire.connect(url, tenant="t", root=root, keyring=Keyring.of(alice)) as bus:
        async with bus.subscribe("knowledge.>", handle, durable="plain") as sub:
            for content in ("fine", "bad"):
                await bus.publish(KnowledgeShared(topic="m", content=content), identity=alice)
            while (sub.stats.handled, sub.stats.dead_lettered) != (1, 1):
                await asyncio.sleep(0.01)
            durable = sub.durable
    value = lambda name: REGISTRY.get_sample_value(name, {"consumer": durable})
    print(json.dumps({
        "tracing": _observe.TRACING is not None,
        "otel": [name for name in sys.modules if name.startswith("opentelemetry.")],
        "delivered": value("eventwire_events_delivered_total"),
        "errors": value("eventwire_handler_errors_total"),
        "runs": value("eventwire_handler_duration_seconds_count"),
        "seconds": value("eventwire_handler_duration_seconds_sum"),
    }))

asyncio.run(main(sys.argv[1]))
"""


def test_without_opentelemetry_handler_runs_are_still_counted_and_timed(
    nats_server: eventwire.EmbeddedServer,
) -> None:
    """Metrics without tracing (the ``prometheus`` extra alone): each handler run is counted
    and timed, a failed one counted as an error; nothing of OpenTelemetry is imported."""
    done = subprocess.run(
        [sys.executable, "-c", _METRICS_ONLY, nats_server.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert (found["tracing"], found["otel"]) == (False, [])
    assert (found["delivered"], found["errors"], found["runs"]) == (2.0, 1.0, 2.0)
    assert found["seconds"] > 0
