"""Observability: a three-agent flow as one trace, metrics scraped over HTTP and read through
OpenTelemetry, health probes.

Run it with ``python examples/observability.py`` (needs ``eventwire[otel,prometheus]`` and
``opentelemetry-sdk``): on an embedded server a ``planner`` asks for research, the
``researcher`` shares what it found, the ``writer`` turns it into a finished task, and the
planner receives it. OpenTelemetry's in-memory exporter collects the spans: the script
prints them as one tree (one trace across the three agents, carried in the signed
``traceparent`` claim), scrapes ``/metrics`` from ``eventwire.serve_metrics``, reads the
same metrics from OpenTelemetry's in-memory metric reader, asks ``/readyz`` of
``eventwire.serve_health``, and exits 0 (1 if the flow was not one trace or a metric is
missing).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import eventwire
from eventwire import (
    Agent,
    Event,
    HelpRequested,
    Identity,
    Keyring,
    KnowledgeShared,
    TaskCompleted,
)

TENANT = "acme"
SHOWN = ("eventwire_events_published_total", "eventwire_events_delivered_total")
OTEL_SHOWN = ("messaging.client.sent.messages", "messaging.process.duration")


def install_tracing() -> InMemorySpanExporter:
    """What an application does once: a tracer provider exporting its spans (here: kept
    in memory, to print them)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    return memory


def install_metrics() -> InMemoryMetricReader:
    """What an application does once: a meter provider with a reader (here: in memory, read
    on demand; usually a PeriodicExportingMetricReader with an OTLP exporter)."""
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def print_otel_metrics(reader: InMemoryMetricReader) -> set[str]:
    """Print eventwire's OpenTelemetry counters and histogram counts; the names seen."""
    data = reader.get_metrics_data()
    found = [
        metric
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        if scope.scope.name == "eventwire"
        for metric in scope.metrics
        if metric.name in OTEL_SHOWN
    ]
    for metric in found:
        for point in metric.data.data_points:
            value = getattr(point, "count", None) or getattr(point, "value", None)
            attributes = dict(point.attributes or {})
            who = attributes.get("messaging.consumer.group.name")
            what = attributes.get("cloudevents.event_type")
            print(f"  {metric.name} {who or what}: {value}")
    return {metric.name for metric in found}


def agents(done: asyncio.Future[TaskCompleted]) -> tuple[Agent, Agent, Agent]:
    planner = Agent("planner", identity=Identity.generate(TENANT, "planner"))
    researcher = Agent(
        "researcher", capabilities=["research"], identity=Identity.generate(TENANT, "researcher")
    )
    writer = Agent("writer", identity=Identity.generate(TENANT, "writer"))

    @researcher.on("capability.research.help")
    async def research(event: Event) -> None:
        question = event.parse(HelpRequested).question
        await researcher.publish(KnowledgeShared(topic="trip", content=f"notes on {question}"))

    @writer.on("knowledge.trip")
    async def write(event: Event) -> None:
        notes = event.parse(KnowledgeShared).content
        await writer.publish(TaskCompleted(task_type="write", task_id=event.id, result=notes))

    @planner.on("task.write.completed")
    async def finished(event: Event) -> None:
        if not done.done():
            done.set_result(event.parse(TaskCompleted))

    return planner, researcher, writer


def print_tree(spans: tuple[ReadableSpan, ...]) -> int:
    """Print the spans as a tree by parent; the number of distinct traces."""
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {span.context.span_id for span in spans if span.context is not None}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in ids else None, []).append(span)

    def show(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            attributes = span.attributes or {}
            who = attributes.get("messaging.consumer.group.name")
            signer = attributes.get("eventwire.source")
            extra = f" consumer {who}, signed by {signer}" if who else ""
            print(f"  {'  ' * depth}{span.name} [{span.kind.name}]{extra}")
            if span.context is not None:
                show(span.context.span_id, depth + 1)

    show(None, 0)
    return len({span.context.trace_id for span in spans if span.context is not None})


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def main() -> int:
    memory = install_tracing()
    reader = install_metrics()
    done: asyncio.Future[TaskCompleted] = asyncio.get_running_loop().create_future()
    planner, researcher, writer = agents(done)
    keyring = Keyring.of(planner.identity, researcher.identity, writer.identity)
    with eventwire.serve_metrics(0) as metrics:
        async with eventwire.connect(tenant=TENANT, keyring=keyring) as bus:
            async with planner.serve(bus), researcher.serve(bus), writer.serve(bus):
                memory.clear()  # only the flow's spans: not the agents' start-up
                with trace.get_tracer("example").start_as_current_span("plan a trip"):
                    question = "a weekend in Lisbon"
                    await planner.publish(HelpRequested(capability="research", question=question))
                result = await asyncio.wait_for(done, timeout=30)
                print(f"planner got: {result.result!r}")
                async with eventwire.serve_health(planner) as probes:
                    status, body = await asyncio.to_thread(get, probes.url + "/readyz")
                    health = json.loads(body)
                    print(f"GET /readyz -> {status}: planner {health['status']}, "
                          f"score {health['score']}")  # fmt: skip
            spans = memory.get_finished_spans()
            # the agents also deliver each other's start-up announcements: not this flow
            flow = [s for s in spans if "agent.lifecycle" not in s.name]
            print(f"{len(flow)} spans:")
            traces = print_tree(tuple(flow))
            print(f"traces: {traces}")
        status, text = await asyncio.to_thread(get, metrics.url)
        print(f"GET /metrics -> {status}, e.g.:")
        for line in text.splitlines():
            if line.startswith(SHOWN):
                print(f"  {line}")
    print("OpenTelemetry metrics (sent events by type; handler runs by consumer):")
    seen = print_otel_metrics(reader)
    return 0 if traces == 1 and status == 200 and seen == set(OTEL_SHOWN) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
