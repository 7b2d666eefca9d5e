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
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventwire import (
    Event,
    HelpRequested,
    KnowledgeShared,
    RetryPolicy,
    StatusUpdate,
    TaskCompleted,
    Unprocessable,
)
from eventwire._observe import observed_handler
from eventwire._tracing import TRACING
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


PARENTS = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # sampled
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",  # not sampled
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",  # sampled, random trace id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case: invalid
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # 00 with a fifth part
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",  # a later version
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the forbidden version
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    "not a traceparent",
    "",
]


@pytest.mark.parametrize("claim", PARENTS)
def test_a_claimed_traceparent_is_continued_as_the_w3c_propagator_reads_it(claim: str) -> None:
    """The handler's fast parse agrees with OpenTelemetry's own propagator, field by field,
    on valid, invalid and future-version claims (twice: the second from the cache)."""
    assert TRACING is not None
    expected = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": claim})
    ).get_span_context()
    for _ in range(2):
        got = trace.get_current_span(TRACING.parent(claim)).get_span_context()
        assert (got.trace_id, got.span_id, got.trace_flags, got.is_remote, got.is_valid) == (
            expected.trace_id,
            expected.span_id,
            expected.trace_flags,
            expected.is_remote,
            expected.is_valid,
        )


def test_the_signed_traceparent_is_the_one_the_propagator_would_inject() -> None:
    assert TRACING is not None
    assert TRACING.traceparent() is None  # no current span: nothing to sign
    with trace.get_tracer("tests").start_as_current_span("outer"):
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        assert TRACING.traceparent() == carrier["traceparent"]


async def test_the_handler_span_is_current_while_it_runs_and_the_context_restored_after(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    """The CONSUMER span gets every attribute at its start, is the current span inside the
    handler only, and the caller's context is back after a handler returned or raised."""
    alice = make_identity("alice", bus.keyring)
    received: list[Event] = []

    async def keep(event: Event) -> None:
        received.append(event)

    async with bus.subscribe("status.>", keep, durable="keep"):
        await bus.publish(StatusUpdate(component="api", state="up"), identity=alice)
        await wait_until(lambda: len(received) == 1)
    [event] = received
    inside: list[trace.Span] = []

    async def succeed(event: Event) -> None:
        inside.append(trace.get_current_span())

    async def fail(event: Event) -> None:
        inside.append(trace.get_current_span())
        raise ValueError("boom")

    spans.clear()
    with trace.get_tracer("tests").start_as_current_span("caller") as caller:
        await observed_handler(succeed, "direct-ok")(event)
        assert trace.get_current_span() is caller
        with pytest.raises(ValueError, match="boom"):
            await observed_handler(fail, "direct-fail")(event)
        assert trace.get_current_span() is caller
    ok, failing = named(spans, "process status.api")
    assert [span.get_span_context() for span in inside] == [ok.context, failing.context]
    published = event.traceparent
    for span in (ok, failing):  # continues the event's trace, not the caller's
        assert traceparent_of(span).split("-")[1] == str(published).split("-")[1]
        assert span.attributes is not None
        assert dict(span.attributes) == {
            "messaging.system": "nats",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": "status.api",
            "messaging.consumer.group.name": "direct-ok" if span is ok else "direct-fail",
            "messaging.message.id": event.id,
            "eventwire.source": f"{bus.tenant}/alice",
        }
    assert ok.status.status_code is StatusCode.UNSET
    assert failing.status.status_code is StatusCode.ERROR
    assert failing.status.description == "ValueError: boom"
    assert [each.name for each in failing.events] == ["exception"]


async def test_an_unsampled_upstream_trace_stays_unsampled_across_agents(
    bus: eventwire.Bus, spans: InMemorySpanExporter
) -> None:
    """A publisher whose trace is not sampled signs flags 00: the handler's span is not
    recorded (parent-based sampling), yet it is current, so what the handler publishes
    still carries the same trace, unsampled."""
    alice = make_identity("alice", bus.keyring)
    relay = make_identity("relay", bus.keyring)
    received: list[Event] = []

    async def forward(event: Event) -> None:
        received.append(event)
        await bus.publish(KnowledgeShared(topic="relayed", content="x"), identity=relay)

    async def keep(event: Event) -> None:
        received.append(event)

    upstream = trace.SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True
    )  # trace flags 00: not sampled
    async with (
        bus.subscribe("status.>", forward, durable="relay"),
        bus.subscribe("knowledge.relayed", keep, durable="sink"),
    ):
        with trace.use_span(trace.NonRecordingSpan(upstream)):
            await bus.publish(StatusUpdate(component="edge", state="up"), identity=alice)
        await wait_until(lambda: len(received) == 2)
    for event in received:  # the publish span (unrecorded) under the upstream, then the next
        version, trace_id, span_id, flags = str(event.traceparent).split("-")
        assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "00")
        assert int(span_id, 16) not in (0, upstream.span_id)
    assert received[0].traceparent != received[1].traceparent
    assert not named(spans, "publish status.edge")
    assert not named(spans, "process status.edge")
    assert not named(spans, "process knowledge.relayed")
