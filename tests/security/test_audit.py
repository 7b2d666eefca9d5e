"""Audit records: hash chain, gaps, edits, broken links, resume, strict parsing, signing,
positions in a log (skipped messages, copies stored elsewhere)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventwire_security import (
    BadSignature,
    Identity,
    Keyring,
    SecurityError,
    UnknownKey,
    sign_claims,
)
from eventwire_security._audit import (
    AUDIT_TYPE,
    GENESIS,
    AuditBroken,
    AuditChain,
    AuditError,
    AuditGap,
    AuditRecord,
    AuditRecordInvalid,
    AuditReplayed,
    AuditTampered,
    canonical_json,
    link_error,
    read_stored,
    sign_record,
    verify_chain,
    verify_record,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def build(count: int = 5) -> tuple[AuditChain, list[AuditRecord]]:
    chain = AuditChain()
    records = [
        chain.append(
            "acme/bob",
            "refused",
            f"acme.orders.{n}",
            "bad-signature",
            {"kid": f"k{n}", "n": n, "ok": False, "tags": ["a", None, 1.5]},
            now=NOW + timedelta(seconds=n),
        )
        for n in range(1, count + 1)
    ]
    return chain, records


def edited(record: AuditRecord, **changes: Any) -> AuditRecord:
    return dataclasses.replace(record, **changes)


def rehashed(record: AuditRecord, **changes: Any) -> AuditRecord:
    """``record`` edited and given its own matching hash (a careful forger)."""
    draft = edited(record, **changes)
    return edited(draft, hash=draft.compute_hash())


def test_append_and_verify() -> None:
    chain = AuditChain()
    assert (chain.seq, chain.head) == (0, GENESIS)
    assert verify_chain([]) == 0
    _, records = build(5)
    first = records[0]
    assert (first.seq, first.prev_hash, first.time) == (1, GENESIS, "2030-06-01T12:00:01Z")
    assert first.details == {"kid": "k1", "n": 1, "ok": False, "tags": ["a", None, 1.5]}
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.hash
    assert verify_chain(records) == 5
    assert verify_chain(r.to_dict() for r in records) == 5
    assert verify_chain(AuditRecord.from_json(r.to_json()) for r in records) == 5


def test_hash_is_sha256_of_canonical_json_without_hash() -> None:
    chain, (record, *_) = build(1)
    body = {k: v for k, v in json.loads(record.to_json()).items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record.hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert record.hash == record.compute_hash() == chain.head
    assert record.to_json() == canonical_json(record.to_dict())
    assert record.to_json().startswith(b'{"action":"refused","actor":"acme/bob",')


def test_unicode_is_hashed_as_utf8() -> None:
    record = AuditChain().append("acme/bob", "refused", "acme.caf\u00e9", "r", now=NOW)
    assert "caf\u00e9".encode() in record.to_json()
    assert verify_chain([record]) == 1
    with pytest.raises(AuditRecordInvalid):
        AuditChain().append("acme/bob", "refused", "\ud800", "r", now=NOW)


def test_edit_is_tampered_at_that_seq() -> None:
    _, records = build(5)
    records[2] = edited(records[2], reason="ok")
    with pytest.raises(AuditTampered) as info:
        verify_chain(records)
    assert (info.value.seq, info.value.reason) == (3, "audit-tampered")
    assert str(info.value).startswith("audit-tampered at seq 3: ")


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "acme/alice"},
        {"action": "accepted"},
        {"subject": "x"},
        {"time": "2030-06-01T11:00:04Z"},
        {"details": {}},
        {"prev_hash": "1" * 64},
    ],
)
def test_every_field_is_covered(change: dict[str, Any]) -> None:
    _, records = build(4)
    records[3] = edited(records[3], **change)
    with pytest.raises(AuditTampered) as info:
        verify_chain(records)
    assert info.value.seq == 4


def test_mutating_details_after_the_fact_is_detected() -> None:
    _, records = build(3)
    records[1].details["n"] = 99
    with pytest.raises(AuditTampered) as info:
        verify_chain(records)
    assert info.value.seq == 2


def test_details_are_copied() -> None:
    details: dict[str, Any] = {"list": [1]}
    record = AuditChain().append("a", "refused", "s", "r", details, now=NOW)
    details["list"].append(2)
    assert record.details == {"list": [1]}
    assert verify_chain([record]) == 1


def test_deleted_middle_record_is_a_gap() -> None:
    _, records = build(5)
    del records[2]
    with pytest.raises(AuditGap) as info:
        verify_chain(records)
    exc = info.value
    assert (exc.expected, exc.found, exc.seq, exc.reason) == (3, 4, 4, "audit-gap")


def test_missing_first_record_is_a_gap() -> None:
    _, records = build(3)
    with pytest.raises(AuditGap) as info:
        verify_chain(records[1:])
    assert (info.value.expected, info.value.found) == (1, 2)


def test_duplicated_record_is_a_gap() -> None:
    _, records = build(3)
    with pytest.raises(AuditGap) as info:
        verify_chain([records[0], records[1], records[1], records[2]])
    assert (info.value.expected, info.value.found) == (3, 2)


def test_reordered_records() -> None:
    _, records = build(5)
    swapped = [records[0], records[2], records[1], records[3], records[4]]
    with pytest.raises(AuditGap) as gap:
        verify_chain(swapped)
    assert (gap.value.expected, gap.value.found) == (2, 3)
    # Renumbered and rehashed to hide the swap: the links give it away.
    renumbered = [
        records[0],
        rehashed(records[2], seq=2, prev_seq=1),
        rehashed(records[1], seq=3, prev_seq=2),
        records[3],
        records[4],
    ]
    with pytest.raises(AuditBroken) as broken:
        verify_chain(renumbered)
    assert (broken.value.seq, broken.value.reason) == (2, "audit-broken")


def test_rehashed_edit_breaks_the_next_link() -> None:
    _, records = build(5)
    records[2] = rehashed(records[2], reason="nothing to see")
    with pytest.raises(AuditBroken) as info:
        verify_chain(records)
    assert info.value.seq == 4
    assert verify_chain(records[:3]) == 3  # undetectable without a later record or head


def test_deleted_and_relinked_record_is_broken() -> None:
    _, records = build(4)
    # Drop seq 2, renumber seq 3 -> 2 and rehash it, but its prev_hash still names seq 2.
    forged = [records[0], rehashed(records[2], seq=2, prev_seq=1)]
    with pytest.raises(AuditBroken) as info:
        verify_chain(forged)
    assert info.value.seq == 2


def test_first_record_must_link_to_genesis() -> None:
    _, records = build(2)
    with pytest.raises(AuditBroken) as info:
        verify_chain([rehashed(records[0], prev_hash="a" * 64)])
    assert info.value.seq == 1


def test_resume() -> None:
    chain, records = build(3)
    resumed = AuditChain.resume(AuditRecord.from_json(records[-1].to_json()))
    assert (resumed.seq, resumed.head) == (3, chain.head)
    more = [resumed.append("cli/admin", "key.rotated", "acme/alice", "scheduled", now=NOW)]
    more.append(resumed.append("cli/admin", "policy.changed", "acme", "", {"rules": 3}, now=NOW))
    assert [r.seq for r in more] == [4, 5]
    assert more[0].prev_hash == records[-1].hash
    assert verify_chain(records + more) == 5
    assert verify_chain(more, after=records[-1]) == 2
    with pytest.raises(AuditGap):
        verify_chain(more[1:], after=records[-1])
    with pytest.raises(AuditBroken):
        verify_chain(more, after=rehashed(records[-1], reason="x"))
    with pytest.raises(AuditTampered):
        AuditChain.resume(edited(records[-1], reason="x"))
    with pytest.raises(AuditTampered):
        verify_chain(more, after=edited(records[-1], reason="x"))


def test_default_time_is_now_utc() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    record = AuditChain().append("a", "refused", "s", "r")
    assert record.time.endswith("Z")
    stamp = datetime.fromisoformat(record.time.replace("Z", "+00:00"))
    assert before <= stamp <= datetime.now(UTC)
    paris = datetime(2030, 6, 1, 14, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert AuditChain().append("a", "b", "c", "d", now=paris).time == "2030-06-01T12:00:00.250000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditChain().append("a", "b", "c", "d", now=datetime(2030, 1, 1))


def valid_dict() -> dict[str, Any]:
    _, (record,) = build(1)
    return record.to_dict()


INVALID: dict[str, Any] = {
    "seq-zero": ("seq", 0),
    "seq-bool": ("seq", True),
    "seq-str": ("seq", "1"),
    "seq-float": ("seq", 1.0),
    "seq-huge": ("seq", 2**63),
    "prev-seq-same": ("prev_seq", 1),
    "prev-seq-negative": ("prev_seq", -1),
    "prev-seq-bool": ("prev_seq", False),
    "prev-seq-str": ("prev_seq", "0"),
    "time-naive": ("time", "2030-06-01T12:00:01"),
    "time-offset": ("time", "2030-06-01T12:00:01+00:00"),
    "time-bad-day": ("time", "2030-02-30T12:00:01Z"),
    "time-unicode-digits": ("time", "\u0662030-06-01T12:00:01Z"),
    "time-int": ("time", 1900000000),
    "actor-int": ("actor", 1),
    "action-empty": ("action", ""),
    "subject-null": ("subject", None),
    "reason-list": ("reason", ["r"]),
    "details-list": ("details", []),
    "details-null": ("details", None),
    "prev-hash-upper": ("prev_hash", "A" * 64),
    "prev-hash-short": ("prev_hash", "0" * 63),
    "hash-int": ("hash", 0),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_from_json_wrong_types(name: str) -> None:
    field, value = INVALID[name]
    data = valid_dict()
    data[field] = value
    with pytest.raises(AuditRecordInvalid) as info:
        AuditRecord.from_json(json.dumps(data).encode())
    assert info.value.reason == "audit-invalid"
    with pytest.raises(AuditRecordInvalid):
        verify_chain([data])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"null",
        b"not json",
        b'{"seq": NaN}',
        b"\xff",
    ],
)
def test_from_json_not_a_record(raw: bytes) -> None:
    with pytest.raises(AuditRecordInvalid):
        AuditRecord.from_json(raw)


def test_from_json_strict_shape() -> None:
    data = valid_dict()
    with pytest.raises(AuditRecordInvalid, match="unknown fields \\['extra'\\]"):
        AuditRecord.from_dict({**data, "extra": 1})
    without = dict(data)
    del without["hash"]
    with pytest.raises(AuditRecordInvalid, match="missing fields \\['hash'\\]"):
        AuditRecord.from_dict(without)
    raw = json.dumps(data).encode()
    duplicated = raw.replace(b'"seq": 1', b'"seq": 1, "seq": 1')
    with pytest.raises(AuditRecordInvalid, match="duplicate"):
        AuditRecord.from_json(duplicated)
    with pytest.raises(AuditRecordInvalid):
        AuditRecord.from_json(raw.decode())  # type: ignore[arg-type]
    assert AuditRecord.from_json(bytearray(raw)) == AuditRecord.from_dict(data)
    with pytest.raises(AuditRecordInvalid):
        verify_chain(["not a record"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "details",
    [
        {"t": (1, 2)},
        {"k": {1: "int key"}},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {"set": {1}},
        {"bytes": b"x"},
        {"deep": [[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]},
    ],
)
def test_details_must_be_plain_json(details: dict[str, Any]) -> None:
    with pytest.raises(AuditRecordInvalid):
        AuditChain().append("a", "refused", "s", "r", details, now=NOW)


def test_record_is_hashable_and_frozen() -> None:
    _, records = build(2)
    assert len({records[0], records[1], AuditRecord.from_json(records[0].to_json())}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        records[0].reason = "x"  # type: ignore[misc]


def test_errors_are_typed() -> None:
    for cls in (AuditRecordInvalid, AuditGap, AuditTampered, AuditBroken):
        assert issubclass(cls, AuditError)
        assert issubclass(cls, SecurityError)


def test_signed_record(alice: Identity, bob: Identity) -> None:
    chain, records = build(3)
    token = sign_record(records[-1], alice)
    record = verify_record(token, Keyring.of(alice))
    assert record == records[-1]
    assert record.hash == chain.head
    with pytest.raises(UnknownKey):
        verify_record(token, Keyring.of(bob))
    head, payload, signature = token.split(b".")
    with pytest.raises(BadSignature):
        verify_record(head + b"." + payload[:-4] + b"AAAA." + signature, Keyring.of(alice))


def test_signed_record_shape(alice: Identity) -> None:
    _, (record,) = build(1)
    base = {"source": "acme/alice", "tenant": "acme"}
    keyring = Keyring.of(alice)
    bad_claims: list[dict[str, Any]] = [
        {**base, "type": "eventwire.keyring/1", "record": record.to_dict()},
        {**base, "type": AUDIT_TYPE, "record": record.to_dict(), "extra": 1},
        {**base, "type": AUDIT_TYPE, "record": {**record.to_dict(), "seq": "1"}},
        {**base, "type": AUDIT_TYPE},
    ]
    for claims in bad_claims:
        with pytest.raises(AuditRecordInvalid):
            verify_record(sign_claims(claims, alice), keyring)
    forged = {**base, "type": AUDIT_TYPE, "record": {**record.to_dict(), "reason": "x"}}
    with pytest.raises(AuditTampered):
        verify_record(sign_claims(forged, alice), keyring)


# --- positions in a log: records skip bad messages, copies are refused where they land ---


def test_a_record_at_a_later_position_links_past_the_skipped_ones() -> None:
    chain, records = build(2)
    later = chain.append("acme/bob", "refused", "s", "r", now=NOW, seq=5)  # 3, 4: not records
    assert (later.seq, later.prev_seq, later.prev_hash) == (5, 2, records[1].hash)
    assert (chain.seq, chain.head) == (5, later.hash)
    assert verify_chain([*records, later]) == 3
    following = chain.append("acme/bob", "refused", "s", "r", now=NOW)
    assert (following.seq, following.prev_seq) == (6, 5)
    with pytest.raises(AuditRecordInvalid, match="prev_seq"):
        chain.append("acme/bob", "refused", "s", "r", now=NOW, seq=6)  # not after the last


def test_a_record_following_a_position_without_a_valid_record_is_a_gap() -> None:
    chain, records = build(2)
    later = chain.append("acme/bob", "refused", "s", "r", now=NOW, seq=5)
    # seq 2 was a valid record when seq 5 was written; without it seq 5 follows nothing.
    with pytest.raises(AuditGap) as info:
        verify_chain([records[0], later])
    assert (info.value.expected, info.value.found, info.value.seq) == (2, 5, 5)
    assert "follows seq 2, which is missing or not a valid record" in str(info.value)


def test_link_error_names_each_way_a_link_can_be_wrong() -> None:
    _, records = build(3)
    first, second, third = records
    assert link_error(second, first.seq, first.hash) is None
    assert link_error(first, 0, GENESIS) is None
    gap = link_error(third, first.seq, first.hash)  # 3 follows 2, but the last valid is 1
    assert isinstance(gap, AuditGap)
    assert (gap.expected, gap.found) == (2, 3)
    fork = link_error(second, third.seq, third.hash)  # 2 links to 1, but 3 came before
    assert isinstance(fork, AuditBroken)
    assert "links to seq 1, but the previous record is seq 3" in str(fork)
    rehash = link_error(second, first.seq, "f" * 64)
    assert isinstance(rehash, AuditBroken)
    assert rehash.seq == 2


def test_read_stored_takes_a_record_at_its_own_position() -> None:
    _, records = build(2)
    assert read_stored(records[1].to_json(), 2) == records[1]


def test_read_stored_refuses_a_copy_at_another_position(alice: Identity) -> None:
    _, records = build(2)
    with pytest.raises(AuditReplayed) as info:
        read_stored(records[0].to_json(), 3)
    assert (info.value.seq, info.value.position, info.value.reason) == (1, 3, "audit-replayed")
    token = sign_record(records[1], alice)
    assert read_stored(token, 2, Keyring.of(alice)) == records[1]
    with pytest.raises(AuditReplayed):
        read_stored(token, 7, Keyring.of(alice))  # a valid signature does not make it belong


def test_read_stored_with_writers_requires_their_signature(alice: Identity, bob: Identity) -> None:
    _, (record,) = build(1)
    writers = Keyring.of(alice)
    with pytest.raises(AuditRecordInvalid, match="unsigned record"):
        read_stored(record.to_json(), 1, writers)
    with pytest.raises(UnknownKey):
        read_stored(sign_record(record, bob), 1, writers)
    # Chain-only (no writers): signed or not, a well-formed record counts, unchecked.
    assert read_stored(sign_record(record, bob), 1) == record
    assert read_stored(record.to_json(), 1) == record


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"a.b.c", b"a.b", b"\xff\xfe", b"[1]", b'{"seq": 1}', b"{"]
)
def test_read_stored_refuses_what_is_no_record(data: bytes, alice: Identity) -> None:
    with pytest.raises(AuditRecordInvalid):
        read_stored(data, 1)
    with pytest.raises(SecurityError):
        read_stored(data, 1, Keyring.of(alice))


def test_read_stored_refuses_an_edited_record(alice: Identity) -> None:
    _, (record,) = build(1)
    with pytest.raises(AuditTampered):
        read_stored(edited(record, reason="fine").to_json(), 1)
    forged = {"source": "acme/alice", "tenant": "acme", "type": AUDIT_TYPE}
    claims = {**forged, "record": {**record.to_dict(), "reason": "fine"}}
    with pytest.raises(AuditTampered):
        read_stored(sign_claims(claims, alice), 1)  # chain-only: the hash still counts


def outcome(data: bytes, position: int, writers: Keyring | None) -> AuditRecord | SecurityError:
    try:
        return read_stored(data, position, writers)
    except SecurityError as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), position=st.integers(1, 10))
def test_read_stored_refuses_random_bytes_with_a_typed_error(data: bytes, position: int) -> None:
    assert isinstance(outcome(data, position, None), SecurityError)


@settings(max_examples=300, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4))
def test_a_mutated_token_is_the_record_or_a_typed_error(
    flips: list[tuple[int, int]], alice: Identity
) -> None:
    _, (record,) = build(1)
    token = bytearray(sign_record(record, alice))
    for index, value in flips:
        token[index % len(token)] ^= value
    for writers in (None, Keyring.of(alice)):
        result = outcome(bytes(token), 1, writers)
        assert result == record or isinstance(result, SecurityError)
    if not flips:
        assert outcome(bytes(token), 1, Keyring.of(alice)) == record
