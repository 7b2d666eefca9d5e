"""The OpenTelemetry side of the SDK's metrics (the ``otel`` extra): instruments of the meter
``eventwire``, from OpenTelemetry's global meter provider (or one given to
:func:`eventwire.use_meter_provider`).

Checked once, at import: without ``opentelemetry-api`` nothing is imported and
:data:`OTEL_METRICS` is ``False``. With it, instruments come from
``get_meter("eventwire", <version>)``: until the application sets a meter provider they are
the API's proxies, and forward once it does.

Instrument names follow the OpenTelemetry messaging semantic conventions where one fits
(:data:`SEMCONV`), with their required attributes; the others are eventwire's own, under
``eventwire.``; each Prometheus label becomes one attribute (:data:`ATTRIBUTES`: ``type`` is
``cloudevents.event_type``, ``consumer`` the durable name as ``messaging.consumer.group.name``
like the tracing spans, ``reason`` ``eventwire.refusal.reason`` or ``eventwire.dlq.reason``,
the others ``eventwire.*``)::

    OpenTelemetry                         unit       Prometheus (eventwire_...)
    messaging.client.sent.messages        {message}  events_published_total (S)
    messaging.client.operation.duration   s          publish_duration_seconds (S, send)
    messaging.client.consumed.messages    {message}  events_delivered_total (P)
    messaging.process.duration            s          handler_duration_seconds (P)
    eventwire.handler.errors              {run}      handler_errors_total
    eventwire.events.retried              {event}    events_retried_total
    eventwire.events.refused              {event}    events_refused_total
    eventwire.events.dead_lettered        {event}    events_dead_lettered_total
    eventwire.consumer.pending            {event}    consumer_pending_events
    eventwire.consumer.ack_pending        {event}    consumer_ack_pending_events
    eventwire.registry.agents             {agent}    registry_agents
    eventwire.circuit.open                1          circuit_open
    eventwire.health.score                1          health_score
    eventwire.cache.lookups               {lookup}   cache_lookups_total
    eventwire.order.late                  {event}    order_late_total
    eventwire.order.early_releases        {event}    order_early_releases_total
    eventwire.causal.held                 {event}    causal_held_total
    eventwire.causal.held_too_long        {event}    causal_held_too_long_total

S: with ``messaging.system=nats``, ``messaging.operation.name=publish`` (send: and
``messaging.operation.type=send``); P: with ``messaging.system=nats``,
``messaging.operation.name=process``. Counters are observable counters (see
:mod:`._metrics`); a failed handler run is counted by ``eventwire.handler.errors``, not by an
``error.type`` attribute on ``messaging.process.duration``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

try:
    from opentelemetry import metrics as otel_metrics
except ImportError:  # pragma: no cover - the extra is installed in the tests
    otel_metrics = None  # type: ignore[assignment]  # the module or None

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
        _Gauge,
    )

OTEL_METRICS = otel_metrics is not None
NAME = "eventwire"
Kind = Literal["counter", "histogram", "gauge"]

# the messaging semantic conventions' instruments eventwire reports (the rest: its own names)
SEMCONV = (
    "messaging.client.sent.messages",
    "messaging.client.operation.duration",
    "messaging.client.consumed.messages",
    "messaging.process.duration",
)
# the attribute each Prometheus label becomes
ATTRIBUTES: Mapping[str, str] = {
    "type": "cloudevents.event_type",
    "consumer": "messaging.consumer.group.name",
    "target": "eventwire.circuit.target",
    "subject": "eventwire.health.subject",
    "bucket": "eventwire.cache.bucket",
    "level": "eventwire.cache.level",
    "policy": "eventwire.order.policy",
    "cause": "eventwire.order.cause",
}
# a reason's attribute: of a refusal, of a move to the dead-letter queue (as on its span)
REFUSAL = "eventwire.refusal.reason"
DLQ = "eventwire.dlq.reason"
_SENT = {"messaging.system": "nats", "messaging.operation.name": "publish"}
_PROCESS = {"messaging.system": "nats", "messaging.operation.name": "process"}


@dataclass(frozen=True, slots=True)
class Instrument:
    """An OpenTelemetry instrument: its name and unit, the attribute key of each label (in
    the Prometheus metric's order) and constant attributes (the conventions' required ones)."""

    name: str
    unit: str
    keys: tuple[str, ...] = ()
    constant: Mapping[str, str] = field(default_factory=dict)

    def attributes(self, values: Sequence[str]) -> dict[str, str]:
        """The attributes of one combination of label values."""
        return {**self.constant, **dict(zip(self.keys, values, strict=True))}


def own(name: str, unit: str, *labels: str, reason: str = "") -> Instrument:
    """One of eventwire's own instruments; its attribute keys are those of the Prometheus
    ``labels`` (:data:`ATTRIBUTES`; a ``reason`` label's key is given: it differs)."""
    return Instrument(name, unit, tuple(reason if x == "reason" else ATTRIBUTES[x] for x in labels))


def sent(name: str, unit: str, operation_type: str = "") -> Instrument:
    """A producer's instrument of the conventions (attributes of a publish; the operation's
    type where the instrument wants it)."""
    constant = _SENT | {"messaging.operation.type": operation_type} if operation_type else _SENT
    return Instrument(name, unit, (ATTRIBUTES["type"],), constant)


def processed(name: str, unit: str) -> Instrument:
    """A consumer's instrument of the conventions (attributes of a handler run)."""
    return Instrument(name, unit, (ATTRIBUTES["consumer"],), _PROCESS)


def meter(provider: MeterProvider | None = None) -> Meter:
    """The meter ``eventwire`` of ``provider`` (``None``: OpenTelemetry's global provider;
    always the same meter, a proxy until the application sets its provider)."""
    if provider is None:
        return _global_meter()
    return provider.get_meter(NAME, _version())


@functools.cache
def _global_meter() -> Meter:
    return otel_metrics.get_meter(NAME, _version())


def is_provider(value: object) -> bool:
    """Whether ``value`` is an OpenTelemetry ``MeterProvider`` (the API's or an SDK's)."""
    return otel_metrics is not None and isinstance(value, otel_metrics.MeterProvider)


def create(
    meter: Meter, kind: Kind, spec: Instrument, description: str, buckets: Sequence[float]
) -> Histogram | _Gauge:
    """The synchronous instrument ``spec`` of ``meter`` (counters: :func:`observe`); a
    histogram advises the Prometheus ``buckets``
    (opentelemetry-api 1.30 and later; before, the SDK's default buckets or a View's)."""
    if kind == "gauge":  # a synchronous gauge: opentelemetry-api 1.23 and later
        return meter.create_gauge(spec.name, spec.unit, description)
    try:
        return meter.create_histogram(
            spec.name, spec.unit, description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # pragma: no cover - opentelemetry-api < 1.30 has no advice
        return meter.create_histogram(spec.name, spec.unit, description)


def observe(
    meter: Meter,
    spec: Instrument,
    description: str,
    totals: Callable[[], Iterable[tuple[float, dict[str, str]]]],
) -> None:
    """An observable counter ``spec`` of ``meter`` reporting ``totals()`` (value, attributes)
    each time a reader collects."""

    def collect(_: CallbackOptions) -> list[Observation]:
        return [otel_metrics.Observation(value, attributes) for value, attributes in totals()]

    meter.create_observable_counter(spec.name, [collect], spec.unit, description)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eventwire")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return ""
