"""The observability hooks of the SDK's hot paths: tracing (:mod:`._tracing`) and metrics
(:mod:`._metrics`), each present only with its extra installed.

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
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from eventwire_security import dlq_subject

from ._metrics import METRICS
from ._tracing import TRACING, claimed_traceparent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

    from eventwire_security import Identity

    from ._bus import PublishAck
    from ._codec import Codec
    from ._dlq import DeadLetterQueue
    from ._event import Event, Publishable

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


def _producer(operation: str, destination: str) -> Any:
    return TRACING.producer(operation, destination) if TRACING is not None else nullcontext()


def observed_publish(
    fn: Callable[Concatenate[S, Publishable, P], Awaitable[PublishAck]],
) -> Callable[Concatenate[S, Publishable, P], Awaitable[PublishAck]]:
    """``Bus.publish`` in a ``publish <subject>`` PRODUCER span, counted and timed."""
    if not ENABLED:
        return fn

    @functools.wraps(fn)
    async def publish(bus: S, item: Publishable, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        started = time.perf_counter()
        with _producer("publish", item.subject()) as span:
            ack = await fn(bus, item, *args, **kwargs)
            if span is not None:
                span.set_attribute("messaging.message.id", ack.event_id)
        if METRICS is not None:
            METRICS.published.labels(item.event_type).inc()
            METRICS.publish_seconds.labels(item.event_type).observe(time.perf_counter() - started)
        return ack

    return publish


def observed_handler(
    handler: Callable[[Event], Awaitable[None]], consumer: str
) -> Callable[[Event], Awaitable[None]]:
    """``handler`` in a CONSUMER ``process`` span continuing the event's trace, counted and
    timed per ``consumer`` (the durable name)."""
    if not ENABLED:
        return handler

    # the labelled children once per subscription, not once per event
    delivered = METRICS.delivered.labels(consumer) if METRICS is not None else None
    errors = METRICS.handler_errors.labels(consumer) if METRICS is not None else None
    seconds = METRICS.handler_seconds.labels(consumer) if METRICS is not None else None

    async def handle(event: Event) -> None:
        started = time.perf_counter()
        span = (
            TRACING.consumer(event.subject, consumer, event.traceparent)
            if TRACING is not None
            else nullcontext()
        )
        try:
            with span as current:
                if current is not None:  # the event was verified: its id and signer
                    current.set_attributes(
                        {"messaging.message.id": event.id, "eventwire.source": event.source}
                    )
                await handler(event)
        except Exception:
            if errors is not None:
                errors.inc()
            raise
        finally:
            if delivered is not None and seconds is not None:
                delivered.inc()
                seconds.observe(time.perf_counter() - started)

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
