"""Target selection for direct calls: strategies, open circuits skipped, choices explained."""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from eventwire import (
    Candidate,
    Chooser,
    CircuitOpen,
    CircuitState,
    InvalidArgument,
    Load,
    NobodyServing,
    NoResponders,
    Strategy,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

IDLE = Load(in_flight=0, capacity=4)
BUSY = Load(in_flight=4, queue_depth=3, capacity=4, latency_ms=900)


def test_least_loaded_picks_the_idle_agent_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    chooser = Chooser("least-loaded")
    candidates = [Candidate("busy", BUSY), Candidate("idle", IDLE)]
    with caplog.at_level(logging.DEBUG, logger="eventwire.routing"):
        choice = chooser.choose("summarize", candidates)
    assert choice.agent == "idle"
    assert choice.reason == (
        "least-loaded: utilisation 0.00, latency 0 ms (others: busy=1.75); 2 eligible"
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"capability summarize: chose idle ({choice.reason})"
    ]


def test_least_loaded_breaks_ties_by_latency_then_rotates() -> None:
    chooser = Chooser(Strategy.LEAST_LOADED)
    slow = Candidate("slow", Load(in_flight=1, capacity=2, latency_ms=50))
    fast = Candidate("fast", Load(in_flight=1, capacity=2, latency_ms=5))
    assert chooser.choose("x", [slow, fast]).agent == "fast"
    twins = [Candidate("a", IDLE), Candidate("b", IDLE), Candidate("c", IDLE)]
    assert [chooser.choose("x", twins).agent for _ in range(6)] == ["b", "c", "a", "b", "c", "a"]


def test_round_robin_visits_every_eligible_agent_in_turn() -> None:
    chooser = Chooser("round-robin")
    candidates = [Candidate(name) for name in ("c", "a", "b")]
    assert [chooser.choose("x", candidates).agent for _ in range(6)] == [
        "a",
        "b",
        "c",
        "a",
        "b",
        "c",
    ]


def test_random_spreads_the_choice() -> None:
    chooser = Chooser("random", rng=random.Random(7))
    candidates = [Candidate(name) for name in ("a", "b", "c")]
    counts = Counter(chooser.choose("x", candidates).agent for _ in range(300))
    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) > 50


def test_open_circuits_are_skipped_half_open_ones_are_eligible() -> None:
    chooser = Chooser("least-loaded")
    candidates = [
        Candidate("broken", IDLE, CircuitState.OPEN, retry_in=12.0),
        Candidate("recovering", BUSY, CircuitState.HALF_OPEN),
    ]
    choice = chooser.choose("summarize", candidates)
    assert choice.agent == "recovering"
    assert [c.agent for c in choice.skipped] == ["broken"]
    assert choice.reason.endswith("1 eligible, skipped (circuit open): broken")


def test_every_circuit_open_fails_fast_with_the_nearest_probe() -> None:
    candidates = [
        Candidate("a", circuit=CircuitState.OPEN, retry_in=9.0),
        Candidate("b", circuit=CircuitState.OPEN, retry_in=3.0),
    ]
    with pytest.raises(CircuitOpen) as refused:
        Chooser().choose("summarize", candidates)
    assert refused.value.target == "capability summarize"
    assert refused.value.retry_in == 3.0


def test_no_candidate_is_nobody_serving() -> None:
    with pytest.raises(NobodyServing) as nobody:
        Chooser().choose("summarize", [])
    assert isinstance(nobody.value, NoResponders)
    assert nobody.value.capability == "summarize"
    assert "no live agent has this capability" in str(nobody.value)


def test_a_user_function_chooses_by_name_or_candidate() -> None:
    def heaviest(candidates: Sequence[Candidate]) -> Candidate:
        return max(candidates, key=lambda c: c.load.utilisation)

    candidates = [Candidate("busy", BUSY), Candidate("idle", IDLE)]
    choice = Chooser(heaviest).choose("x", candidates)
    assert choice.agent == "busy"
    assert choice.reason == "strategy function 'heaviest'; 2 eligible"
    assert Chooser(lambda _c: "idle").choose("x", candidates).agent == "idle"


def test_a_user_function_may_only_pick_an_eligible_candidate() -> None:
    candidates = [Candidate("a"), Candidate("open", circuit=CircuitState.OPEN, retry_in=1)]
    with pytest.raises(InvalidArgument, match=r"strategy: .*'open'.*not one of the eligible"):
        Chooser(lambda _c: "open").choose("x", candidates)


def test_an_unknown_strategy_name_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"strategy: unknown strategy 'fastest'"):
        Chooser("fastest")


def test_load_utilisation_counts_queued_work_per_slot() -> None:
    assert Load(in_flight=2, queue_depth=2, capacity=4).utilisation == 1.0
    assert Load(in_flight=1, capacity=0).utilisation == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"in_flight": -1}, "in_flight"),
        ({"queue_depth": 1.5}, "queue_depth"),
        ({"capacity": True}, "capacity"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"latency_ms": "3"}, "latency_ms"),
    ],
)
def test_a_bad_load_report_is_refused_by_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{field}: must be a number"):
        Load(**kwargs)  # type: ignore[arg-type]
