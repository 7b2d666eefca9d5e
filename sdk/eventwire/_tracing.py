"""OpenTelemetry tracing (the ``otel`` extra), following the messaging semantic conventions.

Checked once, at import: without ``opentelemetry-api`` nothing is imported and
:data:`TRACING` is ``None``, so the hooks in :mod:`._observe` leave the SDK's functions
unwrapped. With it, spans go to whatever tracer provider the application configured. Until
one is configured (OpenTelemetry's proxy or no-op provider) no span is started at all: a
handler only runs in the context of its event's verified ``traceparent`` claim, as the no-op
tracer would leave it, so a trace passes through an agent without a provider unbroken, at
the cost of one check per event instead of a no-op span's.

The W3C ``traceparent`` of the current span is signed into each event's claims on publish;
a consumer continues the trace from the verified claim, so a flow across agents is one
trace. A claim is read only after the event's signature was verified.

The per-event paths (a handler run, a publish) are kept lean: a span is started with all its
attributes at once (one call into the tracer, none later), made current with one
``attach``/``detach`` pair around the handler (the handler's own publishes join the trace)
instead of nested context managers, and a ``traceparent`` claim is parsed directly instead of
through the propagator's carrier machinery (other trace-context versions still go to it).
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is installed in the tests
    trace = None  # type: ignore[assignment]  # the module or None

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind

    from ._event import Event

SYSTEM = "nats"
_TRACEPARENT = "traceparent"
# W3C trace context version 00, lower-case hex (as the propagator wants it); others: the propagator
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class Tracing:
    """Span helpers over OpenTelemetry's global tracer provider."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("eventwire", _version())
        self._propagator = TraceContextTextMapPropagator()
        self._last: tuple[str, Context] | None = None  # (traceparent, its parent context)
        self._configured = False

    def configured(self) -> bool:
        """Whether the application set a tracer provider (OpenTelemetry allows it once, so
        a yes is kept); until then spans would all be no-op spans, and none is started."""
        if not self._configured:
            provider = trace.get_tracer_provider()
            self._configured = not isinstance(provider, _NO_PROVIDER)
        return self._configured

    def passed_through(self, traceparent: str | None) -> Span | None:
        """Without a provider: the remote span of a verified ``traceparent`` claim, to run
        in (what the no-op tracer's span would be), or ``None`` without a claim."""
        parent = self.parent(traceparent)
        return None if parent is None else trace.get_current_span(parent)

    def traceparent(self) -> str | None:
        """The current span's W3C ``traceparent``, or ``None`` without a valid one (as the
        propagator's ``inject``, without its carrier)."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"

    def parent(self, traceparent: str | None) -> Context | None:
        """The context a verified ``traceparent`` claim continues (``None``: the current).

        The last one parsed is kept: the events of one batch (``publish_many`` in a span)
        share it. A context holding only the remote span: it serves to start a span,
        which is then made current in the handler's own context (baggage and all).
        """
        if traceparent is None:
            return None
        last = self._last
        if last is not None and last[0] == traceparent:
            return last[1]
        match = _VERSION_00.fullmatch(traceparent)
        if match is None:  # another version, or invalid: the propagator decides
            return self._propagator.extract({_TRACEPARENT: traceparent})
        trace_id, span_id = int(match[1], 16), int(match[2], 16)
        if not trace_id or not span_id:
            return None  # invalid: as the propagator, the current context
        remote = trace.SpanContext(
            trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(int(match[3], 16))
        )
        parent = trace.set_span_in_context(trace.NonRecordingSpan(remote), otel_context.Context())
        self._last = (traceparent, parent)
        return parent

    def start_consumer(self, event: Event, consumer: str, start_time: int) -> Span | None:
        """A started (not current) CONSUMER ``process`` span of a verified ``event``, with
        every attribute given at its start, continuing the event's trace context. Without
        a provider, see :meth:`passed_through`."""
        if not self.configured():
            return self.passed_through(event.traceparent)
        subject = event.subject
        return self._tracer.start_span(
            f"process {subject}",
            context=self.parent(event.traceparent),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": subject,
                "messaging.consumer.group.name": consumer,
                "messaging.message.id": event.id,
                "eventwire.source": event.source,
            },
            start_time=start_time,
        )

    def start_producer(self, operation: str, destination: str) -> Span:
        """A started (not current) PRODUCER span ``{operation} {destination}``."""
        return self._tracer.start_span(
            f"{operation} {destination}",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.name": operation,
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
            },
        )

    @contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        parent: Context | None = None,
    ) -> Iterator[Span]:
        """A current span; an exception escaping it is recorded and sets an error status.
        Without a provider: no span, only ``parent`` made current (if any)."""
        if not self.configured():
            remote = trace.INVALID_SPAN if parent is None else trace.get_current_span(parent)
            if parent is None:
                yield remote
            else:
                with trace.use_span(remote, end_on_exit=False):
                    yield remote
            return
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes={"messaging.system": SYSTEM, **attributes}
        ) as current:
            yield current

    def dead_letter(
        self, destination: str, reason: str, parent: Context | None
    ) -> AbstractContextManager[Span]:
        """A PRODUCER span moving an event to the dead-letter queue."""
        return self.span(
            f"send {destination}",
            trace.SpanKind.PRODUCER,
            {
                "messaging.operation.name": "send",
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
                "eventwire.dlq.reason": reason,
            },
            parent=parent,
        )

    def client(self, target: str, destination: str) -> AbstractContextManager[Span]:
        """A CLIENT span of a direct request to ``target``."""
        return self.span(
            f"request {target}",
            trace.SpanKind.CLIENT,
            {
                "messaging.operation.name": "request",
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
            },
        )

    def server(self, destination: str, traceparent: str | None) -> AbstractContextManager[Span]:
        """A SERVER span answering a direct request, continuing the caller's trace."""
        return self.span(
            f"process {destination}",
            trace.SpanKind.SERVER,
            {
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": destination,
            },
            parent=self.parent(traceparent),
        )


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eventwire")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return None


def activate(span: Span) -> Token[Context]:
    """Make ``span`` the current span; the token for :func:`deactivate`."""
    return otel_context.attach(trace.set_span_in_context(span))


def deactivate(token: Token[Context]) -> None:
    """Restore the context :func:`activate` replaced."""
    otel_context.detach(token)


def failed(span: Span, exc: Exception) -> None:
    """Record ``exc`` escaping ``span`` (as ``use_span`` does): an event and an error status."""
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def claimed_traceparent(body: bytes) -> str | None:
    """The ``traceparent`` claim of an event body (CloudEvents JSON), if it has a valid one."""
    try:
        value = json.loads(body).get(_TRACEPARENT)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 512 else None


_NO_PROVIDER = (trace.ProxyTracerProvider, trace.NoOpTracerProvider) if trace is not None else ()
TRACING: Tracing | None = Tracing() if trace is not None else None
