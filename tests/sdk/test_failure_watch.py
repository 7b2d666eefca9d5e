"""FailureWatch: registry heartbeats in, each failure reported once, withdrawals never."""

from __future__ import annotations

import pytest

from eventwire import (
    AgentFailed,
    Beat,
    Failure,
    FailureWatch,
    InvalidEvent,
    PhiSettings,
    failure_msg_id,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def beat(watch: FailureWatch, clock: Clock, instance: str, seconds: int, start: int = 1) -> int:
    """One heartbeat a second from ``instance`` for ``seconds``; returns the last revision."""
    revision = start
    for _ in range(seconds):
        watch.heartbeat(Beat("summarizer", instance, revision, 1e9 + clock.now))
        revision += 1
        clock.now += 1.0
    return revision - 1


def test_a_silent_instance_is_reported_once_with_its_last_heartbeat() -> None:
    clock = Clock()
    watch = FailureWatch(PhiSettings(first_interval=1.0), clock=clock)
    last = beat(watch, clock, "i1", 20)
    assert watch.due() == []
    clock.now += 5
    (failure,) = watch.due()
    assert failure == Failure("summarizer", "i1", (), last, 1e9 + clock.now - 6, failure.phi)
    assert failure.phi >= 8
    assert watch.due() == []  # once per silence
    assert failure_msg_id("ew", failure) == f"ew.failed.summarizer.i1.{last}"


def test_an_instance_that_beats_again_can_fail_again() -> None:
    clock = Clock()
    watch = FailureWatch(clock=clock)
    last = beat(watch, clock, "i1", 10)
    clock.now += 10
    assert [f.revision for f in watch.due()] == [last]
    last = beat(watch, clock, "i1", 10, start=last + 1)
    assert watch.due() == []
    clock.now += 10
    assert [f.revision for f in watch.due()] == [last]


def test_a_withdrawn_instance_is_never_reported() -> None:
    clock = Clock()
    watch = FailureWatch(clock=clock)
    beat(watch, clock, "i1", 10)
    watch.withdrawn("summarizer", "i1")
    clock.now += 60
    assert watch.due() == []
    assert watch.phi("summarizer", "i1") is None


def test_replayed_or_reordered_updates_are_not_heartbeats() -> None:
    clock = Clock()
    watch = FailureWatch(clock=clock)
    last = beat(watch, clock, "i1", 10)
    clock.now += 10
    watch.heartbeat(Beat("summarizer", "i1", last, 0.0))  # the same revision
    watch.heartbeat(Beat("summarizer", "i1", 3, 0.0))  # an older one
    assert [f.revision for f in watch.due()] == [last]


def test_two_observers_report_the_same_message_id() -> None:
    reports = []
    for lag in (0.0, 0.3):  # observers see each update at slightly different times
        clock = Clock()
        watch = FailureWatch(clock=clock)
        for revision in range(1, 11):
            watch.heartbeat(Beat("a", "i9", revision, 100.0 + revision), at=revision + lag)
        clock.now = 30
        reports += [failure_msg_id("ew", f) for f in watch.due()]
    assert reports == ["ew.failed.a.i9.10", "ew.failed.a.i9.10"]


def test_a_failure_becomes_an_agent_failed_event() -> None:
    failure = Failure("summarizer", "a1b2c3d4", ("summarize",), 42, 1.7e9, 12.5)
    event = AgentFailed.of(failure)
    assert event.subject() == "agent.lifecycle.failed"
    assert event.event_type == "io.eventwire.agent.failed"
    assert event.data() == {
        "agent": "summarizer",
        "instance": "a1b2c3d4",
        "capabilities": ["summarize"],
        "revision": 42,
        "last_heartbeat": 1.7e9,
        "phi": 12.5,
    }


def test_an_agent_failed_event_refuses_a_bad_instance() -> None:
    with pytest.raises(InvalidEvent, match="instance"):
        AgentFailed.of(Failure("summarizer", "no.dots", (), 1, 0.0, 9.0))
