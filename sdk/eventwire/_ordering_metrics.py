"""Prometheus counters of the order buffers (event-time and causal), in prometheus-client's
default registry next to the SDK's others (see ``_metrics``); no-ops without the extra.
Labels are bounded: a policy name or a release cause, never an id or a source."""

from __future__ import annotations

from typing import Literal

try:
    import prometheus_client
except ImportError:  # pragma: no cover - the extra is installed in the tests
    prometheus_client = None  # type: ignore[assignment]


class OrderMetrics:
    """The counters; one instance per process."""

    def __init__(self) -> None:
        p = prometheus_client
        self.late = p.Counter(
            "eventwire_order_late_total",
            "Events older than one already released by an event-time order, by policy.",
            ["policy"],
        )
        self.early = p.Counter(
            "eventwire_order_early_releases_total",
            "Events an event-time order released before the watermark passed them, by cause.",
            ["cause"],
        )
        self.held = p.Counter(
            "eventwire_causal_held_total", "Events a causal order held for a cause."
        )
        self.held_too_long = p.Counter(
            "eventwire_causal_held_too_long_total",
            "Events a causal order held until its timeout, by policy.",
            ["policy"],
        )


_METRICS = OrderMetrics() if prometheus_client is not None else None


def count_late(policy: str) -> None:
    if _METRICS is not None:
        _METRICS.late.labels(policy).inc()


def count_early(cause: Literal["capacity", "idle"], count: int) -> None:
    if _METRICS is not None and count:
        _METRICS.early.labels(cause).inc(count)


def count_held() -> None:
    if _METRICS is not None:
        _METRICS.held.inc()


def count_held_too_long(policy: str) -> None:
    if _METRICS is not None:
        _METRICS.held_too_long.labels(policy).inc()
