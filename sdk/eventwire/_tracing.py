"""OpenTelemetry tracing (the ``otel`` extra), following the messaging semantic conventions.

Checked once, at import: without ``opentelemetry-api`` nothing is imported and
:data:`TRACING` is ``None``, so the hooks in :mod:`._observe` leave the SDK's functions
unwrapped. With it, spans go to whatever tracer provider the application configured (none:
OpenTelemetry's no-op provider, and no ``traceparent`` claim is signed).

The W3C ``traceparent`` of the current span is signed into each event's claims on publish;
a consumer continues the trace from the verified claim, so a flow across agents is one
trace. A claim is read only after the event's signature was verified.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is installed in the tests
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind

SYSTEM = "nats"
_TRACEPARENT = "traceparent"


class Tracing:
    """Span helpers over OpenTelemetry's global tracer provider."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("eventwire", _version())
        self._propagator = TraceContextTextMapPropagator()

    def traceparent(self) -> str | None:
        """The current span's W3C ``traceparent``, or ``None`` without a recording one."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get(_TRACEPARENT)

    def parent(self, traceparent: str | None) -> Context | None:
        """The context a verified ``traceparent`` claim continues (``None``: the current)."""
        if traceparent is None:
            return None
        return self._propagator.extract({_TRACEPARENT: traceparent})

    @contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        parent: Context | None = None,
    ) -> Iterator[Span]:
        """A current span; an exception escaping it is recorded and sets an error status."""
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes={"messaging.system": SYSTEM, **attributes}
        ) as current:
            yield current

    def producer(self, operation: str, destination: str) -> AbstractContextManager[Span]:
        """A PRODUCER span ``{operation} {destination}`` (``publish``, ``send``)."""
        return self.span(
            f"{operation} {destination}",
            trace.SpanKind.PRODUCER,
            {
                "messaging.operation.name": operation,
                "messaging.operation.type": "send",
                "messaging.destination.name": destination,
            },
        )

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

    def consumer(
        self, destination: str, consumer: str, traceparent: str | None
    ) -> AbstractContextManager[Span]:
        """A CONSUMER ``process`` span continuing the event's verified trace context."""
        return self.span(
            f"process {destination}",
            trace.SpanKind.CONSUMER,
            {
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": destination,
                "messaging.consumer.group.name": consumer,
            },
            parent=self.parent(traceparent),
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


def claimed_traceparent(body: bytes) -> str | None:
    """The ``traceparent`` claim of an event body (CloudEvents JSON), if it has a valid one."""
    try:
        value = json.loads(body).get(_TRACEPARENT)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 512 else None


TRACING: Tracing | None = Tracing() if trace is not None else None
