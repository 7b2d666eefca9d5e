"""Replay primitives: the iat/exp window at its boundaries, seen keys, the in-memory seen-set."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventwire_security import EnvelopeError, InvalidName
from eventwire_security._replay import (
    REPLAY_REASONS,
    ReplayRefused,
    ReplayWindow,
    SeenSet,
    seen_key,
)

NOW = 1_900_000_000
WINDOW = ReplayWindow(max_age=300, skew=30)
KEY = re.compile(r"\A[A-Za-z0-9_-]+\.[0-9a-f]{32}\Z")


def refused(reason: str, iat: object, exp: object, now: float = NOW) -> ReplayRefused:
    with pytest.raises(ReplayRefused) as info:
        WINDOW.check_time(iat, exp, now)  # type: ignore[arg-type]
    exc = info.value
    assert exc.reason == reason
    assert str(exc).startswith(f"{reason}: ")
    assert isinstance(exc, EnvelopeError)
    assert (exc.iat, exc.exp, exc.now) == (iat, exp, now)
    return exc


def test_inside_the_window() -> None:
    WINDOW.check_time(NOW, NOW + 60, NOW)
    WINDOW.check_time(NOW - 100, NOW + 60, NOW)
    WINDOW.check_time(NOW, NOW, NOW)  # exp == iat is allowed


def test_from_the_future_boundary() -> None:
    WINDOW.check_time(NOW + 30, NOW + 90, NOW)
    refused("from-the-future", NOW + 31, NOW + 90)
    WINDOW.check_time(NOW + 30, NOW + 90, NOW + 0.0)
    refused("from-the-future", NOW + 31, NOW + 90, NOW + 0.5)


def test_expired_boundary() -> None:
    WINDOW.check_time(NOW - 60, NOW - 30, NOW)  # now == exp + skew: still accepted
    refused("expired", NOW - 60, NOW - 31)
    refused("expired", NOW - 60, NOW - 30, NOW + 0.5)


def test_too_old_boundary() -> None:
    WINDOW.check_time(NOW - 330, NOW + 1000, NOW)  # now - iat == max_age + skew
    refused("too-old", NOW - 331, NOW + 1000)
    refused("too-old", NOW - 330, NOW + 1000, NOW + 0.5)


def test_expired_is_reported_before_too_old() -> None:
    refused("expired", NOW - 10_000, NOW - 9_000)


@pytest.mark.parametrize(
    ("iat", "exp"),
    [
        (NOW + 1, NOW),
        (NOW, NOW - 1),
        (float(NOW), NOW + 60),
        (NOW, float(NOW + 60)),
        (True, NOW),
        (None, None),
        (None, NOW),
        (str(NOW), NOW + 60),
    ],
)
def test_bad_times(iat: object, exp: object) -> None:
    refused("bad-times", iat, exp)


def test_zero_skew_is_exact() -> None:
    window = ReplayWindow(max_age=60, skew=0)
    window.check_time(NOW, NOW, NOW)
    window.check_time(NOW - 60, NOW, NOW)
    for iat, exp, reason in [
        (NOW + 1, NOW + 2, "from-the-future"),
        (NOW - 2, NOW - 1, "expired"),
        (NOW - 61, NOW + 5, "too-old"),
    ]:
        with pytest.raises(ReplayRefused) as info:
            window.check_time(iat, exp, NOW)
        assert info.value.reason == reason


def test_default_now_is_the_wall_clock() -> None:
    now = int(time.time())
    WINDOW.check_time(now, now + 60)
    with pytest.raises(ReplayRefused, match="expired"):
        WINDOW.check_time(now - 200, now - 100)


def test_ints_too_long_to_print() -> None:
    huge = 10**5000  # str() of it raises ValueError (int max str digits)
    for iat, exp, reason in [
        (huge, huge, "from-the-future"),
        (-huge, -huge, "expired"),
        (-huge, huge, "too-old"),
        (huge, -huge, "bad-times"),
    ]:
        with pytest.raises(ReplayRefused, match="int of 16610 bits") as info:
            WINDOW.check_time(iat, exp, NOW)
        assert info.value.reason == reason
    with pytest.raises(ValueError, match="now must be a finite number"):
        WINDOW.check_time(NOW, NOW, huge)


def test_check_claims() -> None:
    WINDOW.check_claims({"iat": NOW, "exp": NOW + 60, "id": "x"}, NOW)
    WINDOW.check_claims({"iat": NOW}, NOW)  # exp is optional: only a ttl sets one
    for claims in ({"exp": NOW}, {}, {"iat": NOW, "exp": "x"}):
        with pytest.raises(ReplayRefused) as info:
            WINDOW.check_claims(claims, NOW)
        assert info.value.reason == "bad-times"


def test_window_validation() -> None:
    assert WINDOW.horizon == 360
    assert ReplayWindow(10).skew == 30
    for max_age in (0, -1, float("nan"), float("inf"), True, "60"):
        with pytest.raises(ValueError, match="max_age"):
            ReplayWindow(max_age)  # type: ignore[arg-type]
    for skew in (-1, float("inf")):
        with pytest.raises(ValueError, match="skew"):
            ReplayWindow(60, skew)
    for now in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="now"):
            WINDOW.check_time(NOW, NOW, now)


def test_reasons() -> None:
    assert REPLAY_REASONS == ("expired", "too-old", "from-the-future", "bad-times", "already-seen")
    exc = ReplayRefused("already-seen", "event id seen before", kid="k1")
    assert (exc.reason, exc.kid, str(exc)) == (
        "already-seen",
        "k1",
        "already-seen: event id seen before",
    )
    with pytest.raises(ValueError, match="unknown replay reason"):
        ReplayRefused("nope", "x")  # type: ignore[arg-type]


ANY_INT = st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
ANY_NOW = st.integers(min_value=0, max_value=2**40) | st.floats(
    min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False
)


def outcome(window: ReplayWindow, iat: int, exp: int, now: float) -> str:
    """ "accepted", a replay reason, or "bad-now" (a ``now`` the caller must not pass)."""
    try:
        window.check_time(iat, exp, now)
    except ReplayRefused as exc:
        return exc.reason
    except ValueError as exc:
        return "bad-now" if str(exc).startswith("now must be") else f"unexpected: {exc}"
    return "accepted"


@given(
    iat=ANY_INT,
    exp=ANY_INT,
    now=ANY_NOW,
    max_age=st.integers(1, 10**6),
    skew=st.integers(0, 600),
)
def test_only_replay_refused_and_exactly_the_window(
    iat: int, exp: int, now: float, max_age: int, skew: int
) -> None:
    window = ReplayWindow(max_age, skew)
    result = outcome(window, iat, exp, now)
    assert result == "accepted" or result in REPLAY_REASONS
    if isinstance(now, int) or now < 2**52:  # the oracle's arithmetic is exact there
        inside = iat <= now + skew and exp >= now - skew and iat >= now - max_age - skew
        assert (result == "accepted") == (exp >= iat and inside)


@given(
    iat=st.integers(),
    exp=st.integers(),
    now=st.integers(min_value=-(2**1100), max_value=2**1100),
)
def test_huge_ints_never_crash(iat: int, exp: int, now: int) -> None:
    result = outcome(WINDOW, iat, exp, now)
    assert result == "accepted" or result in REPLAY_REASONS or result == "bad-now"
    if 0 <= now < 2**1000:
        assert result != "bad-now"
    assert outcome(WINDOW, iat, exp, NOW) in (*REPLAY_REASONS, "accepted")


@given(
    iat=st.integers(NOW - 1000, NOW + 1000),
    lifetime=st.integers(0, 2000),
    a=st.integers(-3000, 3000),
    b=st.integers(-3000, 3000),
)
def test_acceptance_never_spans_more_than_the_horizon(
    iat: int, lifetime: int, a: int, b: int
) -> None:
    accepted = []
    for now in (NOW + a, NOW + b):
        try:
            WINDOW.check_time(iat, iat + lifetime, now)
            accepted.append(now)
        except ReplayRefused:
            pass
    if len(accepted) == 2:
        assert abs(accepted[0] - accepted[1]) <= WINDOW.horizon


def test_seen_key_shape_and_determinism() -> None:
    key = seen_key("acme", "acme/alice", "evt-0001")
    assert KEY.match(key)
    assert key.startswith("acme.")
    assert key == seen_key("acme", "acme/alice", "evt-0001")
    others = {
        seen_key("acme", "acme/alice", "evt-0002"),
        seen_key("acme", "acme/bob", "evt-0001"),
        seen_key("acme2", "acme/alice", "evt-0001"),
        # No ambiguity between where one part ends and the next begins.
        seen_key("acme", "acme/alice,", "evt-0001"),
        seen_key("acme", "acme/alice", ",evt-0001"),
        seen_key("acme", 'acme/alice","', "evt-0001"),
    }
    assert key not in others
    assert len(others) == 6


@given(
    tenant=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"),
    source=st.text(min_size=1),
    event_id=st.text(min_size=1),
)
def test_seen_key_charset(tenant: str, source: str, event_id: str) -> None:
    key = seen_key(tenant, source, event_id)
    assert KEY.match(key)
    assert key.split(".")[0] == tenant
    assert key == seen_key(tenant, source, event_id)


def test_seen_key_validation() -> None:
    for tenant in ("", "ac.me", "acme>", "*", "a b"):
        with pytest.raises(InvalidName):
            seen_key(tenant, "acme/alice", "e")
    with pytest.raises(ValueError, match="event_id"):
        seen_key("acme", "acme/alice", "")
    with pytest.raises(ValueError, match="source"):
        seen_key("acme", 42, "e")  # type: ignore[arg-type]


def test_seen_set_expiry() -> None:
    seen = SeenSet(ttl=60)
    assert seen.add_if_new("a", now=1000)
    assert not seen.add_if_new("a", now=1000)
    assert not seen.add_if_new("a", now=1059.999)
    assert seen.seen("a", now=1059.999)
    assert not seen.seen("a", now=1060)  # expired at exactly added + ttl
    assert seen.add_if_new("a", now=1060)
    assert not seen.add_if_new("a", now=1119)
    assert seen.add_if_new("b", now=1100)
    assert len(seen) == 2
    seen.purge(now=1130)
    assert len(seen) == 1
    assert not seen.seen("a", now=1130)
    assert seen.seen("b", now=1130)
    seen.purge(now=10_000)
    assert len(seen) == 0


def test_seen_set_discard_and_re_add() -> None:
    seen = SeenSet(ttl=60)
    assert seen.add_if_new("a", now=0)
    seen.discard("a")
    seen.discard("never-added")
    assert not seen.seen("a", now=1)
    assert seen.add_if_new("a", now=50)  # its stale expiry (60) must not drop the new one
    assert not seen.add_if_new("a", now=100)
    assert seen.add_if_new("a", now=110)
    assert seen.add_if_new("b", now=110)
    seen.discard("b")
    assert seen.add_if_new("b", now=110)  # same expiry twice in the heap
    seen.purge(now=170)
    assert len(seen) == 0


def test_seen_set_sdk_flow() -> None:
    """Reserve, run the handler, keep on success; forget on failure so a redelivery runs."""
    seen = SeenSet(ttl=WINDOW.horizon)
    key = seen_key("acme", "acme/alice", "evt-1")
    handled = []

    def deliver(ok: bool, now: float) -> str:
        if not seen.add_if_new(key, now=now):
            return "already-seen"
        if not ok:
            seen.discard(key)
            return "nak"
        handled.append(now)
        return "ack"

    assert deliver(ok=False, now=0) == "nak"
    assert deliver(ok=True, now=1) == "ack"  # the redelivery is processed
    assert deliver(ok=True, now=2) == "already-seen"  # a replay is not
    assert handled == [1]


def test_seen_set_validation_and_default_clock() -> None:
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            SeenSet(ttl)
    seen = SeenSet(ttl=3600)
    assert seen.add_if_new("x")
    assert not seen.add_if_new("x")
    assert seen.seen("x")
    with pytest.raises(TypeError):
        seen.add_if_new(b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        seen.add_if_new("y", now=float("nan"))


def test_no_exp_never_expires_and_iat_is_checked_against_the_store_time() -> None:
    week = 7 * 24 * 3600.0
    # stored when it was signed, consumed a week later: accepted
    WINDOW.check_time(NOW, None, NOW + week, stored=NOW + 1)
    # the same event stored again a week later (a captured replay): too old
    with pytest.raises(ReplayRefused) as info:
        WINDOW.check_time(NOW, None, NOW + week, stored=NOW + week)
    assert info.value.reason == "too-old"
    assert "when stored" in info.value.detail
    # stored before it was signed (beyond the skew): from the future
    with pytest.raises(ReplayRefused) as info:
        WINDOW.check_time(NOW, None, NOW + week, stored=NOW - 31)
    assert info.value.reason == "from-the-future"
    # an explicit expiry is checked against now, not the store time
    with pytest.raises(ReplayRefused) as info:
        WINDOW.check_time(NOW, NOW + 60, NOW + week, stored=NOW + 1)
    assert info.value.reason == "expired"

