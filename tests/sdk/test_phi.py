"""The phi-accrual failure detector: values against Akka's formula, and its properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventwire import ConfigError, FailureDetectors, PhiAccrualDetector, PhiSettings


def akka_phi(elapsed: float, mean: float, std: float) -> float:
    """Akka's PhiAccrualFailureDetector.phi, transcribed."""
    y = (elapsed - mean) / std
    e = math.exp(-y * (1.5976 + 0.070566 * y * y))
    if elapsed > mean:
        return -math.log10(e / (1.0 + e))
    return -math.log10(1.0 - 1.0 / (1.0 + e))


def regular(detector: PhiAccrualDetector, beats: int, every: float, start: float = 0.0) -> float:
    at = start
    for _ in range(beats):
        detector.heartbeat(at)
        at += every
    return at - every


def test_matches_akka_on_a_regular_heartbeat() -> None:
    settings = PhiSettings(min_std_deviation=0.1, first_interval=1.0, max_samples=1000)
    detector = PhiAccrualDetector(settings)
    last = regular(detector, 11, 1.0)
    # intervals: the seeds 0.75 and 1.25, then ten of 1.0: mean 1.0, std sqrt(0.125/12)
    std = max(math.sqrt(2 * 0.25**2 / 12), 0.1)
    for elapsed in (0.5, 1.0, 1.3, 1.6, 2.0):
        assert detector.phi(last + elapsed) == pytest.approx(akka_phi(elapsed, 1.0, std))


def test_suspects_a_silent_peer_and_not_a_punctual_one() -> None:
    detector = PhiAccrualDetector(PhiSettings(threshold=8, first_interval=1.0))
    last = regular(detector, 30, 1.0)
    assert detector.available(last + 1.1)
    assert not detector.available(last + 3.0)
    assert detector.last_heartbeat == last


def test_jittery_heartbeats_make_it_patient() -> None:
    punctual = PhiAccrualDetector()
    jittery = PhiAccrualDetector()
    last = regular(punctual, 50, 1.0)
    at = 0.0
    for i in range(50):
        jittery.heartbeat(at)
        at += 0.4 if i % 2 else 1.6
    jittery_last = jittery.last_heartbeat
    assert jittery_last is not None
    assert jittery.phi(jittery_last + 2.5) < punctual.phi(last + 2.5)


def test_acceptable_pause_delays_suspicion() -> None:
    plain = PhiAccrualDetector(PhiSettings())
    lenient = PhiAccrualDetector(PhiSettings(acceptable_pause=2.0))
    last = regular(plain, 20, 1.0)
    regular(lenient, 20, 1.0)
    assert not plain.available(last + 2.5)
    assert lenient.available(last + 2.5)


def test_before_any_heartbeat_phi_is_zero_and_late_arrivals_are_ignored() -> None:
    detector = PhiAccrualDetector(clock=lambda: 50.0)
    assert detector.phi() == 0.0
    detector.heartbeat()
    detector.heartbeat(10.0)  # earlier than the last one: ignored
    assert detector.last_heartbeat == 50.0


def test_old_samples_leave_the_history() -> None:
    detector = PhiAccrualDetector(PhiSettings(max_samples=5))
    regular(detector, 20, 10.0)  # slow, long ago
    last = regular(detector, 6, 1.0, start=200.0)  # then fast: only these intervals are left
    assert not detector.available(last + 5.0)


@given(
    intervals=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=50),
    waits=st.lists(st.floats(0.0, 1e6), min_size=2, max_size=10),
)
def test_phi_is_finite_non_negative_and_grows_with_silence(
    intervals: list[float], waits: list[float]
) -> None:
    detector = PhiAccrualDetector()
    at = 0.0
    for interval in intervals:
        detector.heartbeat(at)
        at += interval
    last = detector.last_heartbeat
    assert last is not None
    values = [detector.phi(last + wait) for wait in sorted(waits)]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert values == sorted(values)


def test_detectors_per_key_report_suspects() -> None:
    now = [0.0]
    detectors: FailureDetectors[tuple[str, str]] = FailureDetectors(clock=lambda: now[0])
    for second in range(10):
        now[0] = float(second)
        detectors.heartbeat(("summarizer", "i1"))
        if second < 5:
            detectors.heartbeat(("summarizer", "i2"))
    now[0] = 10.0
    suspects = detectors.suspects()
    assert [s.key for s in suspects] == [("summarizer", "i2")]
    assert suspects[0].last_heartbeat == 4.0
    assert suspects[0].phi >= 8
    assert not detectors.suspicion(("summarizer", "i1")).suspected
    detectors.forget(("summarizer", "i2"))
    assert ("summarizer", "i2") not in detectors
    assert detectors.suspects() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"max_samples": 1}, "max_samples"),
        ({"min_std_deviation": 0}, "min_std_deviation"),
        ({"acceptable_pause": -1}, "acceptable_pause"),
        ({"first_interval": float("inf")}, "first_interval"),
        ({"threshold": True}, "threshold"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"PhiSettings\.{field} out of range"):
        PhiSettings(**kwargs)  # type: ignore[arg-type]
