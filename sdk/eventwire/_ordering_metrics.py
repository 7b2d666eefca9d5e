"""Counting what the order buffers (event-time and causal) do, in the SDK's Prometheus
metrics (``_metrics``: ``eventwire_order_*``, ``eventwire_causal_*``); no-ops without the
extra. Labels are bounded: a policy name or a release cause, never an id or a source."""

from __future__ import annotations

from typing import Literal

from ._metrics import METRICS


def count_late(policy: str) -> None:
    if METRICS is not None:
        METRICS.order_late.labels(policy).inc()


def count_early(cause: Literal["capacity", "idle"], count: int) -> None:
    if METRICS is not None and count:
        METRICS.order_early.labels(cause).inc(count)


def count_held() -> None:
    if METRICS is not None:
        METRICS.causal_held.inc()


def count_held_too_long(policy: str) -> None:
    if METRICS is not None:
        METRICS.causal_held_too_long.labels(policy).inc()
