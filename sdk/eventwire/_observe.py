"""The observability hooks of the SDK's hot paths: tracing (:mod:`._tracing`) and metrics
(:mod:`._metrics`: Prometheus and/or OpenTelemetry), each present only with its extra.

Every hook is chosen once, at import: with neither extra the decorators return the function
itself and the per-event hooks are a no-op function, so an SDK without them pays nothing
but that call (and no import). The hooks, one line each in the SDK:

- ``Bus.publish`` is decorated with :func:`observed_publish` and signs
  :func:`current_traceparent` into the event's claims;
- ``Subscription`` wraps its handler with :func:`observed_handler`, and counts
  :func:`count_retried` when a failed delivery is scheduled again;
- ``Bus`` counts :func:`count_refused` for each refused event;
- ``request`` (direct) is decorated with :func:`observed_request` and signs the
  traceparent; ``serve_requests`` wraps its handler with :func:`observed_responder`;
- ``DeadLetterQueue.put`` is decorated with :func:`observed_dead_letter`.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from eventwire_security import dlq_subject

from ._metrics import METRICS
from ._tracing import TRACING, Tracing, activate, claimed_traceparent, deactivate, failed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

    from eventwire_security import Identity

    from ._codec import Codec
    from ._dlq import DeadLetterQueue
    from ._event import Event, Publishable
    from ._metrics import CounterChild, HistogramChild
    from ._sending import PublishAck

P = ParamSpec("P")
S = TypeVar("S")
R = TypeVar("R")

ENABLED = TRACING is not None or METRICS is not None


def _no_traceparent() -> None:
    return None


def _nothing(_: str) -> None:
    return None


current_traceparent: Callable[[], str | None] = (
    TRACING.traceparent if TRACING is not None else _no_traceparent
)


def _counter(metric: str) -> Callable[[str], None]:
    """``label -> None`` incrementing ``METRICS.<metric>`` (a no-op without metrics)."""
    if METRICS is None:
        return _nothing
    counter = getattr(METRICS, metric)
    return lambda label: counter.labels(label).inc()


count_refused = _counter("refused")
count_retried = _counter("retried")


def observed_publish(
    fn: Callable[Concatenate[S, Publishable, P], Awaitable[PublishAck]],
) -> Callable[Concatenate[S, Publishable, P], Awaitable[PublishAck]]:
    """``Bus.publish`` in a ``publish <subject>`` PRODUCER span, counted and timed."""
    if not ENABLED:
        return fn

    @functools.wraps(fn)
    async def publish(bus: S, item: Publishable, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        started = time.perf_counter()
        if TRACING is None:
            ack = await fn(bus, item, *args, **kwargs)
        else:
            ack = await _produced(TRACING, item.subject(), lambda: fn(bus, item, *args, **kwargs))
        if METRICS is not None:
            METRICS.published.labels(item.event_type).inc()
            METRICS.publish_seconds.labels(item.event_type).observe(time.perf_counter() - started)
        return ack

    return publish


async def _produced(
    tracing: Tracing, destination: str, send: Callable[[], Awaitable[PublishAck]]
) -> PublishAck:
    """``send()`` with a ``publish <destination>`` PRODUCER span current; the span gets the
    stored event's id."""
    if not tracing.configured():
        return await send()
    span = tracing.start_producer("publish", destination)
    token = activate(span)
    try:
        ack = await send()
        if span.is_recording():
            span.set_attribute("messaging.message.id", ack.event_id)
    except Exception as exc:
        failed(span, exc)
        raise
    finally:
        deactivate(token)
        span.end()
    return ack


class _HandlerMetrics:
    """A subscription's labelled children, looked up once: a run is one count and one
    observation, a failed run one more count."""

    __slots__ = ("delivered", "errors", "seconds")

    def __init__(self, consumer: str) -> None:
        assert METRICS is not None
        self.delivered: CounterChild = METRICS.delivered.labels(consumer)
        self.errors: CounterChild = METRICS.handler_errors.labels(consumer)
        self.seconds: HistogramChild = METRICS.handler_seconds.labels(consumer)

    def ran(self, nanoseconds: int) -> None:
        self.delivered.inc()
        self.seconds.observe(max(nanoseconds, 0) / 1e9)


def observed_handler(
    handler: Callable[[Event], Awaitable[None]], consumer: str
) -> Callable[[Event], Awaitable[None]]:
    """``handler`` in a CONSUMER ``process`` span continuing the event's trace, counted and
    timed per ``consumer`` (the durable name)."""
    if not ENABLED:
        return handler
    metrics = _HandlerMetrics(consumer) if METRICS is not None else None
    if TRACING is None:
        assert metrics is not None
        return _timed(handler, metrics)
    return _traced(handler, consumer, TRACING, metrics)


def _timed(
    handler: Callable[[Event], Awaitable[None]], metrics: _HandlerMetrics
) -> Callable[[Event], Awaitable[None]]:
    """``handler`` counted and timed (metrics without tracing)."""

    async def handle(event: Event) -> None:
        started = time.perf_counter_ns()
        try:
            await handler(event)
        except Exception:
            metrics.errors.inc()
            raise
        finally:
            metrics.ran(time.perf_counter_ns() - started)

    return handle


def _traced(
    handler: Callable[[Event], Awaitable[None]],
    consumer: str,
    tracing: Tracing,
    metrics: _HandlerMetrics | None,
) -> Callable[[Event], Awaitable[None]]:
    """``handler`` with its CONSUMER span current while it runs (so what it publishes joins
    the trace); the span's start and end times are the ones the metrics observe."""

    async def handle(event: Event) -> None:
        started = time.time_ns()
        span = tracing.start_consumer(event, consumer, started)
        token = None if span is None else activate(span)
        try:
            await handler(event)
        except Exception as exc:
            if span is not None:
                failed(span, exc)
            if metrics is not None:
                metrics.errors.inc()
            raise
        finally:
            if token is not None:
                deactivate(token)
            ended = time.time_ns()
            if span is not None:
                span.end(ended)
            if metrics is not None:
                metrics.ran(ended - started)

    return handle


def observed_request(
    fn: Callable[Concatenate[Client, Codec, Identity, str, P], Awaitable[Event]],
) -> Callable[Concatenate[Client, Codec, Identity, str, P], Awaitable[Event]]:
    """A direct request in a ``request <target>`` CLIENT span."""
    if TRACING is None:
        return fn
    tracing = TRACING

    @functools.wraps(fn)
    async def request(
        nc: Client, codec: Codec, identity: Identity, target: str, /,
        *args: P.args, **kwargs: P.kwargs,
    ) -> Event:  # fmt: skip
        with tracing.client(target, f"direct.{codec.tenant}.{target}"):
            return await fn(nc, codec, identity, target, *args, **kwargs)

    return request


def observed_responder(
    handler: Callable[[Event], Awaitable[R]],
) -> Callable[[Event], Awaitable[R]]:
    """A request handler in a SERVER ``process`` span continuing the caller's trace."""
    if TRACING is None:
        return handler
    tracing = TRACING

    async def respond(event: Event) -> R:
        with tracing.server(event.subject, event.traceparent):
            return await handler(event)

    return respond


def observed_dead_letter(
    fn: Callable[Concatenate[DeadLetterQueue, bytes, P], Awaitable[None]],
) -> Callable[Concatenate[DeadLetterQueue, bytes, P], Awaitable[None]]:
    """``DeadLetterQueue.put`` in a ``send <root>.dlq.<consumer>`` PRODUCER span continuing
    the event's trace; counted by reason once stored."""
    if not ENABLED:
        return fn

    @functools.wraps(fn)
    async def put(dlq: DeadLetterQueue, data: bytes, /, *args: P.args, **kwargs: P.kwargs) -> None:
        consumer, reason = str(kwargs.get("consumer")), str(kwargs.get("reason"))
        if TRACING is None:
            await fn(dlq, data, *args, **kwargs)
        else:
            parent = TRACING.parent(claimed_traceparent(data))
            destination = dlq_subject(dlq._root, consumer)
            with TRACING.dead_letter(destination, reason, parent):
                await fn(dlq, data, *args, **kwargs)
        if METRICS is not None:
            METRICS.dead_lettered.labels(reason).inc()

    return put
