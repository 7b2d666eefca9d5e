"""The SDK's metrics, through Prometheus (the ``prometheus`` extra, :func:`serve_metrics`) and
OpenTelemetry (the ``otel`` extra, :mod:`._metrics_otel`), each present only with its extra.

Checked once, at import: with neither extra :data:`METRICS` is ``None``, nothing is imported
and nothing counted. With ``prometheus-client`` the metrics live in its default registry (so
an application's own metrics are served alongside); names follow Prometheus' conventions:
``eventwire_`` prefix, base units (seconds), ``_total`` counters, bounded labels only (the
event type, the consumer's durable name, a refusal or dead-letter reason; never an id).
With ``opentelemetry-api`` each metric is also an instrument of the meter ``eventwire``
(names, units and attributes: :mod:`._metrics_otel`).

A metric is a family (:class:`CounterFamily`, :class:`HistogramFamily`,
:class:`GaugeFamily`) whose ``labels(*values)`` returns a child cached per label values:
the Prometheus child and the OpenTelemetry side with its attributes dict, both looked up
once. A histogram or gauge measurement is one call to each side. A count is one call to
Prometheus and a locked addition to the child's total, which an observable counter reports
when a reader collects: the OpenTelemetry SDK's own measurement path costs several
microseconds (about 4-5 us on the bench machine), a cost the per-event counters avoid.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from . import _metrics_otel as otel
from ._errors import ConfigError, InvalidArgument

try:
    import prometheus_client
except ImportError:  # pragma: no cover - the extra is installed in the tests
    prometheus_client = None  # type: ignore[assignment]  # the module or None

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType
    from wsgiref.simple_server import WSGIServer

    from opentelemetry.metrics import Histogram, Meter, MeterProvider, _Gauge
    from prometheus_client import Counter as PromCounter
    from prometheus_client import Gauge as PromGauge
    from prometheus_client import Histogram as PromHistogram

HOST = "127.0.0.1"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
C = TypeVar("C", bound="_Child")


class _Child:
    """A metric's child for one combination of label values: the Prometheus child (or
    ``None``), its OpenTelemetry side (or ``None``) and that combination's attributes."""

    __slots__ = ("attributes", "otel", "prom")

    def __init__(self, prom: Any, attributes: dict[str, str]) -> None:
        self.prom = prom
        self.otel: Any = None
        self.attributes = attributes


class CounterChild(_Child):
    """A counter's child. Its OpenTelemetry side is a running total under the family's lock
    (``otel``), which an observable counter reports when the reader collects: a count is a
    locked addition here, instead of a measurement through the SDK (several microseconds)."""

    __slots__ = ("total",)
    prom: PromCounter | None
    otel: threading.Lock | None

    def __init__(self, prom: Any, attributes: dict[str, str]) -> None:
        super().__init__(prom, attributes)
        self.total: float = 0

    def inc(self, amount: float = 1) -> None:
        if self.prom is not None:
            self.prom.inc(amount)
        if self.otel is not None:
            with self.otel:
                self.total += amount


class HistogramChild(_Child):
    """A histogram's child: an observation is one call to each side."""

    __slots__ = ()
    prom: PromHistogram | None
    otel: Histogram | None

    def observe(self, amount: float) -> None:
        if self.prom is not None:
            self.prom.observe(amount)
        if self.otel is not None:
            self.otel.record(amount, self.attributes)


class GaugeChild(_Child):
    """A gauge's child (a synchronous OpenTelemetry gauge: the last value set)."""

    __slots__ = ()
    prom: PromGauge | None
    otel: _Gauge | None

    def set(self, value: float) -> None:
        if self.prom is not None:
            self.prom.set(value)
        if self.otel is not None:  # a bool (a circuit's state) as 0 or 1
            self.otel.set(int(value) if isinstance(value, bool) else value, self.attributes)


class _Family(Generic[C]):
    """One metric: its Prometheus metric, its OpenTelemetry side (:meth:`bind`) and its
    children by label values."""

    kind: ClassVar[otel.Kind]
    child: ClassVar[type[Any]]
    __slots__ = ("_children", "_description", "_instrument", "_lock", "_otel", "_prom")

    def __init__(self, prom: Any, instrument: otel.Instrument, description: str) -> None:
        self._prom = prom
        self._instrument = instrument
        self._description = description
        self._otel: Any = None
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> C:
        """The child of these label values (created once, then cached)."""
        found = self._children.get(values)
        return found if found is not None else self._add(values)

    def _add(self, values: tuple[str, ...]) -> C:
        prom = self._prom.labels(*values) if values and self._prom is not None else self._prom
        child: C = self.child(prom, self._instrument.attributes(values))
        with self._lock:
            child.otel = self._otel
            return self._children.setdefault(values, child)

    def bind(self, meter: Meter | None) -> None:
        """Report to ``meter`` from now on (``None``: to no meter)."""
        found = None if meter is None else self._bound(meter)
        with self._lock:
            self._otel = found
            for child in self._children.values():
                child.otel = found

    def _bound(self, meter: Meter) -> Any:
        """The OpenTelemetry side of the children, on ``meter``."""
        spec, buckets = self._instrument, _LATENCY_BUCKETS
        return otel.create(meter, self.kind, spec, self._description, buckets)


class CounterFamily(_Family[CounterChild]):
    """A counter; on the OpenTelemetry side an observable counter reporting the children's
    totals since the last :meth:`bind` (what a synchronous counter on that meter would sum).

    One observable counter per meter: binding a meter again (a provider used before, which
    returns the instrument it has) reuses it; only the meter bound last reports."""

    kind = "counter"
    child = CounterChild
    __slots__ = ("_meter", "_observed")

    def __init__(self, prom: Any, instrument: otel.Instrument, description: str) -> None:
        super().__init__(prom, instrument, description)
        self._meter: Meter | None = None
        self._observed: list[Meter] = []

    def inc(self, amount: float = 1) -> None:
        """Count a metric without labels."""
        self.labels().inc(amount)

    def _bound(self, meter: Meter) -> threading.Lock:
        with self._lock:
            self._meter = meter
            for child in self._children.values():
                child.total = 0
            created = any(seen is meter for seen in self._observed)
            if not created:
                self._observed.append(meter)
        if not created:
            spec, doc = self._instrument, self._description
            otel.observe(meter, spec, doc, lambda: self._totals(meter))
        return self._lock

    def _totals(self, meter: Meter) -> list[tuple[float, dict[str, str]]]:
        """The children's totals (those counted since :meth:`bind`) if ``meter`` is the one
        bound last, else none."""
        with self._lock:
            if meter is not self._meter:
                return []
            return [(c.total, c.attributes) for c in self._children.values() if c.total]


class HistogramFamily(_Family[HistogramChild]):
    kind = "histogram"
    child = HistogramChild
    __slots__ = ()


class GaugeFamily(_Family[GaugeChild]):
    kind = "gauge"
    child = GaugeChild
    __slots__ = ()

    def set(self, value: float) -> None:
        """Set a metric without labels."""
        self.labels().set(value)


def _counter(
    name: str, doc: str, labels: Sequence[str], instrument: otel.Instrument
) -> CounterFamily:
    p = prometheus_client
    return CounterFamily(p.Counter(name, doc, labels) if p else None, instrument, doc)


def _histogram(
    name: str, doc: str, labels: Sequence[str], instrument: otel.Instrument
) -> HistogramFamily:
    p = prometheus_client
    found = p.Histogram(name, doc, labels, buckets=_LATENCY_BUCKETS) if p else None
    return HistogramFamily(found, instrument, doc)


def _gauge(name: str, doc: str, labels: Sequence[str], instrument: otel.Instrument) -> GaugeFamily:
    p = prometheus_client
    return GaugeFamily(p.Gauge(name, doc, labels) if p else None, instrument, doc)


class Metrics:
    """The SDK's metrics: Prometheus counters, histograms and gauges (with
    ``prometheus-client``) and the same as OpenTelemetry instruments (with
    ``opentelemetry-api``; named in a comment on each, ``eventwire.*`` where the messaging
    conventions have none)."""

    def __init__(self, meter: Meter | None) -> None:
        self.published = _counter(
            "eventwire_events_published_total", "Events stored by publish (acked).", ["type"],
            otel.sent("messaging.client.sent.messages", "{message}"),
        )  # fmt: skip
        self.publish_seconds = _histogram(
            "eventwire_publish_duration_seconds", "Publish: signing until JetStream's ack.",
            ["type"], otel.sent("messaging.client.operation.duration", "s", "send"),
        )  # fmt: skip
        self.delivered = _counter(
            "eventwire_events_delivered_total",
            "Verified events handed to a handler (each delivery).", ["consumer"],
            otel.processed("messaging.client.consumed.messages", "{message}"),
        )  # fmt: skip
        self.handler_errors = _counter(
            "eventwire_handler_errors_total", "Handler runs that raised.", ["consumer"],
            otel.own("eventwire.handler.errors", "{run}", "consumer"),
        )  # fmt: skip
        self.handler_seconds = _histogram(
            "eventwire_handler_duration_seconds", "Handler run time.", ["consumer"],
            otel.processed("messaging.process.duration", "s"),
        )  # fmt: skip
        self.refused = _counter(
            "eventwire_events_refused_total", "Events refused before any handler.", ["reason"],
            otel.own("eventwire.events.refused", "{event}", "reason", reason=otel.REFUSAL),
        )  # fmt: skip
        self.retried = _counter(
            "eventwire_events_retried_total", "Failed deliveries scheduled again.", ["consumer"],
            otel.own("eventwire.events.retried", "{event}", "consumer"),
        )  # fmt: skip
        self.dead_lettered = _counter(
            "eventwire_events_dead_lettered_total", "Events moved to the DLQ.", ["reason"],
            otel.own("eventwire.events.dead_lettered", "{event}", "reason", reason=otel.DLQ),
        )  # fmt: skip
        self._gauges()
        self._counts()
        self.bind(meter)

    def _gauges(self) -> None:
        """The gauges, set when health is computed (agent.health(), bus.health(), /healthz)."""
        self.consumer_pending = _gauge(
            "eventwire_consumer_pending_events",
            "Events stored and not yet delivered to the consumer (its lag).", ["consumer"],
            otel.own("eventwire.consumer.pending", "{event}", "consumer"),
        )  # fmt: skip
        self.consumer_ack_pending = _gauge(
            "eventwire_consumer_ack_pending_events",
            "Events delivered to the consumer and not yet acknowledged.", ["consumer"],
            otel.own("eventwire.consumer.ack_pending", "{event}", "consumer"),
        )  # fmt: skip
        self.registry_size = _gauge(
            "eventwire_registry_agents", "Live agent instances in the registry.", [],
            otel.own("eventwire.registry.agents", "{agent}"),
        )  # fmt: skip
        self.breaker_open = _gauge(
            "eventwire_circuit_open",
            "Whether the circuit of direct calls to a target is open (1) or not (0).", ["target"],
            otel.own("eventwire.circuit.open", "1", "target"),
        )  # fmt: skip
        self.health_score = _gauge(
            "eventwire_health_score", "The last health score (0 to 1).", ["subject"],
            otel.own("eventwire.health.score", "1", "subject"),
        )  # fmt: skip

    def _counts(self) -> None:
        """The event cache's lookups and the order buffers' counters (event-time, causal)."""
        self.cache_lookups = _counter(
            "eventwire_cache_lookups_total",
            "Event cache lookups by where they were answered (l1, l2, source, miss, refused).",
            ["bucket", "level"],
            otel.own("eventwire.cache.lookups", "{lookup}", "bucket", "level"),
        )  # fmt: skip
        self.order_late = _counter(
            "eventwire_order_late_total",
            "Events older than one already released by an event-time order, by policy.",
            ["policy"], otel.own("eventwire.order.late", "{event}", "policy"),
        )  # fmt: skip
        self.order_early = _counter(
            "eventwire_order_early_releases_total",
            "Events an event-time order released before the watermark passed them, by cause.",
            ["cause"], otel.own("eventwire.order.early_releases", "{event}", "cause"),
        )  # fmt: skip
        self.causal_held = _counter(
            "eventwire_causal_held_total", "Events a causal order held for a cause.", [],
            otel.own("eventwire.causal.held", "{event}"),
        )  # fmt: skip
        self.causal_held_too_long = _counter(
            "eventwire_causal_held_too_long_total",
            "Events a causal order held until its timeout, by policy.", ["policy"],
            otel.own("eventwire.causal.held_too_long", "{event}", "policy"),
        )  # fmt: skip

    def families(self) -> list[_Family[Any]]:
        return [value for value in vars(self).values() if isinstance(value, _Family)]

    def bind(self, meter: Meter | None) -> None:
        """Report every metric to ``meter``'s instruments from now on (``None``: to none)."""
        for family in self.families():
            family.bind(meter)


class MetricsServer:
    """The Prometheus endpoint ``http://127.0.0.1:<port>/metrics`` served from a thread.

    ``with serve_metrics(port) as server:`` or call :meth:`close` when done.
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and join the thread. Safe twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_metrics(port: int = 9464) -> MetricsServer:
    """Serve the Prometheus metrics on ``127.0.0.1:port`` (0: a free port, see ``.port``).

    :class:`ConfigError` without ``prometheus-client`` (``pip install eventwire[prometheus]``)
    or when the port cannot be bound; :class:`InvalidArgument` for a port out of range.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(f"must be an int from 0 to 65535, got {port!r}", field="port")
    if prometheus_client is None:  # pragma: no cover - the extra is installed in the tests
        raise ConfigError("metrics need prometheus-client: pip install 'eventwire[prometheus]'")
    try:
        server, thread = prometheus_client.start_http_server(port, addr=HOST)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {HOST}:{port}: {exc.strerror}") from exc
    return MetricsServer(server, thread)


def use_meter_provider(provider: MeterProvider | None) -> None:
    """Report eventwire's OpenTelemetry metrics to ``provider`` from now on (``None``: to
    OpenTelemetry's global meter provider, the default).

    Only needed when the global provider will not do: OpenTelemetry lets a process set it
    once, so tests (or an application keeping eventwire's metrics apart) pass their own.
    :class:`ConfigError` without ``opentelemetry-api`` (``pip install eventwire[otel]``);
    :class:`InvalidArgument` for anything but a ``MeterProvider`` or ``None``.
    """
    if METRICS is None or not otel.OTEL_METRICS:
        raise ConfigError(
            "OpenTelemetry metrics need opentelemetry-api: pip install 'eventwire[otel]'"
        )
    if provider is not None and not otel.is_provider(provider):
        name = type(provider).__name__
        raise InvalidArgument(f"must be a MeterProvider or None, got {name}", field="provider")
    METRICS.bind(otel.meter(provider))


METRICS: Metrics | None = (
    Metrics(otel.meter() if otel.OTEL_METRICS else None)
    if prometheus_client is not None or otel.OTEL_METRICS
    else None
)
