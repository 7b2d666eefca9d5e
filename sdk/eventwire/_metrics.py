"""Prometheus metrics (the ``prometheus`` extra) and :func:`serve_metrics`.

Checked once, at import: without ``prometheus-client`` :data:`METRICS` is ``None`` and
nothing is counted. With it, the metrics live in prometheus-client's default registry (so
an application's own metrics are served alongside). Names follow Prometheus' conventions:
``eventwire_`` prefix, base units (seconds), ``_total`` counters, bounded labels only (the
event type, the consumer's durable name, a refusal or dead-letter reason; never an id).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

from ._errors import ConfigError, InvalidArgument

try:
    import prometheus_client
except ImportError:  # pragma: no cover - the extra is installed in the tests
    prometheus_client = None  # type: ignore[assignment]  # the module or None

if TYPE_CHECKING:
    import threading
    from types import TracebackType
    from wsgiref.simple_server import WSGIServer

HOST = "127.0.0.1"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The SDK's counters and histograms in prometheus-client's default registry."""

    def __init__(self) -> None:
        p = prometheus_client
        self.published = p.Counter(
            "eventwire_events_published_total", "Events stored by publish (acked).", ["type"]
        )
        self.publish_seconds = p.Histogram(
            "eventwire_publish_duration_seconds",
            "Publish: signing until JetStream's ack.",
            ["type"],
            buckets=_LATENCY_BUCKETS,
        )
        self.delivered = p.Counter(
            "eventwire_events_delivered_total",
            "Verified events handed to a handler (each delivery).",
            ["consumer"],
        )
        self.handler_errors = p.Counter(
            "eventwire_handler_errors_total", "Handler runs that raised.", ["consumer"]
        )
        self.handler_seconds = p.Histogram(
            "eventwire_handler_duration_seconds",
            "Handler run time.",
            ["consumer"],
            buckets=_LATENCY_BUCKETS,
        )
        self.refused = p.Counter(
            "eventwire_events_refused_total", "Events refused before any handler.", ["reason"]
        )
        self.retried = p.Counter(
            "eventwire_events_retried_total", "Failed deliveries scheduled again.", ["consumer"]
        )
        self.dead_lettered = p.Counter(
            "eventwire_events_dead_lettered_total", "Events moved to the DLQ.", ["reason"]
        )
        # gauges, set when health is computed (agent.health(), bus.health(), /healthz)
        self.consumer_pending = p.Gauge(
            "eventwire_consumer_pending_events",
            "Events stored and not yet delivered to the consumer (its lag).",
            ["consumer"],
        )
        self.consumer_ack_pending = p.Gauge(
            "eventwire_consumer_ack_pending_events",
            "Events delivered to the consumer and not yet acknowledged.",
            ["consumer"],
        )
        self.registry_size = p.Gauge(
            "eventwire_registry_agents", "Live agent instances in the registry."
        )
        self.breaker_open = p.Gauge(
            "eventwire_circuit_open",
            "Whether the circuit of direct calls to a target is open (1) or not (0).",
            ["target"],
        )
        self.health_score = p.Gauge(
            "eventwire_health_score", "The last health score (0 to 1).", ["subject"]
        )
        self.cache_lookups = p.Counter(
            "eventwire_cache_lookups_total",
            "Event cache lookups by where they were answered (l1, l2, source, miss, refused).",
            ["bucket", "level"],
        )
        # the order buffers (event-time and causal): a policy or a release cause as label
        self.order_late = p.Counter(
            "eventwire_order_late_total",
            "Events older than one already released by an event-time order, by policy.",
            ["policy"],
        )
        self.order_early = p.Counter(
            "eventwire_order_early_releases_total",
            "Events an event-time order released before the watermark passed them, by cause.",
            ["cause"],
        )
        self.causal_held = p.Counter(
            "eventwire_causal_held_total", "Events a causal order held for a cause."
        )
        self.causal_held_too_long = p.Counter(
            "eventwire_causal_held_too_long_total",
            "Events a causal order held until its timeout, by policy.",
            ["policy"],
        )


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


METRICS: Metrics | None = Metrics() if prometheus_client is not None else None
