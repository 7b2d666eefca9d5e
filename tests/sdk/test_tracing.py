"""Tracing with OpenTelemetry: spans read from the OTel SDK's in-memory exporter.

The SDK's tracer provider is installed once for the test session (OpenTelemetry allows one
global provider); spans are exported only while a test of this module runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventwire import (
    Event,
    HelpRequested,
    KnowledgeShared,
    RetryPolicy,
    StatusUpdate,
    TaskCompleted,
    Unprocessable,
)
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    import eventwire

FAST = RetryPolicy(max_deliveries=2, initial_delay=0.05, jitter=0.0)


class Recording(SimpleSpanProcessor):
    """Exports only while a test of this module runs: later tests record nothing."""

    enabled = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.enabled:
            super().on_end(span)


@pytest.fixture(scope="session")
def recording() -> tuple[Recording, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    processor = Recording(memory)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return processor, memory


@pytest.fixture
def spans(recording: tuple[Recording, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    processor, memory = recording
    memory.clear()
    processor.enabled = True
    try:
        yield memory
    finally:
        processor.enabled = False
        memory.clear()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(exporter, name)
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_flow_across_three_agents_is_one_trace(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    planner = make_identity("planner", bus.keyring)
    researcher = make_identity("researcher", bus.keyring)
    make_identity("writer", bus.keyring)
    received: list[Event] = []

    async def research(event: Event) -> None:
        received.append(event)
        await bus.publish(
            KnowledgeShared(topic="found", content="42"),
            identity=researcher,
            causation_id=event.id,
        )

    async def write(event: Event) -> None:
        received.append(event)

    async with (
        bus.subscribe("capability.research.help", research, durable="researcher"),
        bus.subscribe("knowledge.found", write, durable="writer"),
    ):
        ack = await bus.publish(
            HelpRequested(capability="research", question="?"), identity=planner
        )
        await wait_until(lambda: len(received) == 2)
        await wait_until(lambda: len(named(spans, "process knowledge.found")) == 1)

    first = only(spans, "publish capability.research.help")
    handled = only(spans, "process capability.research.help")
    second = only(spans, "publish knowledge.found")
    last = only(spans, "process knowledge.found")
    chain = [first, handled, second, last]
    assert len({span.context.trace_id for span in chain}) == 1
    assert first.parent is None  # published outside any span: the flow starts here
    assert parent_of(handled) == first.context.span_id
    assert parent_of(second) == handled.context.span_id
    assert parent_of(last) == second.context.span_id
    # the signed claim carries the publishing span's context
    assert [event.traceparent for event in received] == [
        traceparent_of(first),
        traceparent_of(second),
    ]
    assert [span.kind for span in chain] == [
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    ]
    assert first.attributes is not None
    assert dict(first.attributes) == {
        "messaging.system": "nats",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": "capability.research.help",
        "messaging.message.id": ack.event_id,
    }
    assert last.attributes is not None
    assert last.attributes["messaging.operation.type"] == "process"
    assert last.attributes["messaging.message.id"] == received[1].id
    assert last.attributes["eventwire.source"] == f"{bus.tenant}/researcher"
    assert str(last.attributes["messaging.consumer.group.name"]).startswith("writer")


async def test_a_publish_inside_an_application_span_joins_its_trace(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    alice = make_identity("alice", bus.keyring)
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request from a user") as outer:
        await bus.publish(StatusUpdate(component="app", state="up"), identity=alice)
    published = only(spans, "publish status.app")
    assert published.context.trace_id == outer.get_span_context().trace_id
    assert parent_of(published) == outer.get_span_context().span_id


async def test_a_failing_handler_span_records_the_error_and_the_dlq_move_joins_the_trace(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    alice = make_identity("alice", bus.keyring)
    calls: list[Event] = []

    async def refuse(event: Event) -> None:
        calls.append(event)
        raise Unprocessable("cannot use this")

    async with bus.subscribe("status.>", refuse, durable="strict", retry=FAST) as sub:
        await bus.publish(StatusUpdate(component="db", state="down"), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 1)

    published = only(spans, "publish status.db")
    handled = only(spans, "process status.db")
    moved = only(spans, f"send {bus.root}.dlq.{sub.durable}")
    assert handled.status.status_code is StatusCode.ERROR
    assert [event.name for event in handled.events] == ["exception"]
    assert parent_of(handled) == published.context.span_id
    assert moved.context.trace_id == published.context.trace_id
    assert moved.kind is SpanKind.PRODUCER
    assert moved.attributes is not None
    assert moved.attributes["eventwire.dlq.reason"] == "unprocessable"


async def test_a_direct_request_and_its_answer_are_one_trace(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    asker = make_identity("asker", bus.keyring)
    answerer = make_identity("answerer", bus.keyring)

    async def answer(event: Event) -> TaskCompleted:
        return TaskCompleted(task_type="t", task_id=event.id)

    await bus.serve_requests(answerer, answer)
    await bus.request("answerer", HelpRequested(capability="c", question="?"), identity=asker)
    client = only(spans, "request answerer")
    server = only(spans, f"process direct.{bus.tenant}.answerer")
    assert (client.kind, server.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert parent_of(server) == client.context.span_id
    assert server.context.trace_id == client.context.trace_id


def test_without_opentelemetry_nothing_is_imported_or_wrapped() -> None:
    """With the extras absent (imports blocked) the hooks are the functions themselves."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
        sys.modules["prometheus_client"] = None
        import eventwire
        from eventwire import _observe, _dlq, _direct
        assert not _observe.ENABLED
        assert not hasattr(eventwire.Bus.publish, "__wrapped__")
        assert not hasattr(_dlq.DeadLetterQueue.put, "__wrapped__")
        assert not hasattr(_direct.request, "__wrapped__")
        assert _observe.current_traceparent() is None
        handler = object()
        assert _observe.observed_handler(handler, "d") is handler
        assert not [name for name in sys.modules if name.startswith("opentelemetry.")]
        try:
            eventwire.serve_metrics(0)
        except eventwire.ConfigError as exc:
            assert "eventwire[prometheus]" in str(exc), exc
        else:
            raise AssertionError("serve_metrics without prometheus-client")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def test_publish_many_signs_the_current_trace_context(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    alice = make_identity("alice", bus.keyring)
    received: list[Event] = []

    async def keep(event: Event) -> None:
        received.append(event)

    tracer = trace.get_tracer("tests")
    async with bus.subscribe("status.>", keep, durable="batch"):
        with tracer.start_as_current_span("a batch job") as job:
            items = [StatusUpdate(component=f"c{i}", state="up") for i in range(3)]
            await bus.publish_many(items, identity=alice)
        await wait_until(lambda: len(received) == 3)
    context = job.get_span_context()
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert {event.traceparent for event in received} == {expected}
    handled = named(spans, "process status.c0")
    assert [parent_of(span) for span in handled] == [context.span_id]
