"""Refusals land in the tamper-evident audit stream, in order, chained; what others append
there never stops a bus; the bus's writer task is owned (logged if it dies, closed always)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import nats
import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    ConfigError,
    CustomEvent,
    Event,
    Forbidden,
    Identity,
    Keyring,
    Policy,
)
from eventwire._audit_log import (
    DEFAULT_MAX_SCAN,
    MAX_REPORTED,
    audit_stream_name,
    audit_subject,
)
from eventwire._codec import Rejection
from eventwire_security import sign_event
from eventwire_security._audit import AuditChain, AuditRecord, sign_record
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client

    from eventwire._auditing import Auditor


@pytest.fixture
async def raw(nats_server: eventwire.EmbeddedServer) -> AsyncIterator[Client]:
    """A client that skips the SDK: what a compromised agent appends with."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def auditor_of(bus: eventwire.Bus) -> Auditor:
    auditor = bus._link.auditor if bus._link else None
    assert auditor is not None
    return auditor


async def records(bus: eventwire.Bus) -> list[AuditRecord]:
    return [record async for record in bus.audit.tail()]


async def test_refusals_are_audited(
    bus: eventwire.Bus, nats_server: eventwire.EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    stranger = Identity.generate(TENANT, "stranger")  # not trusted
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    async with bus.subscribe("custom.>", handler, durable="a") as sub:
        nc = await nats.connect(nats_server.url)
        try:
            claims = {"source": f"{TENANT}/stranger", "tenant": TENANT, "subject": "custom.x"}
            forged = sign_event(claims, stranger)
            headers = {SIGNATURE_HEADER: forged.signature}
            await nc.jetstream().publish(f"{bus.root}.custom.x", forged.body, headers=headers)
            await nc.jetstream().publish(f"{bus.root}.custom.x", b"garbage")
        finally:
            await nc.close()
        await bus.publish(CustomEvent("custom.ok", "ok"), identity=alice)
        await wait_until(lambda: len(seen) == 1 and sub.stats.rejected == 2)
        # the bus appends refusals from its own writer task, in order
        await wait_until(lambda: bus.audit.head is not None and bus.audit.head.seq == 2)
        found = [(r.action, r.reason) async for r in bus.audit.tail()]
    assert found == [("refused", "unknown-key"), ("refused", "malformed")]
    report = await bus.audit.verify()
    assert (report.records, report.clean) == (2, True)


async def test_policy_denials_are_audited(nats_server: eventwire.EmbeddedServer, root: str) -> None:
    policy = Policy.from_toml('version = 1\n[[rule]]\nprincipal = "*"\npublish = ["custom.ok"]\n')
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, policy=policy) as bus:
        alice = make_identity("alice", bus.keyring)
        with pytest.raises(Forbidden):
            await bus.publish(CustomEvent("custom.no", "no"), identity=alice)
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as reader:
        found = await records(reader)
    assert [(r.action, r.subject, r.reason) for r in found] == [
        ("refused", "custom.no", "policy-denied")
    ]
    assert found[0].details == {"actor": f"{TENANT}/alice"}


# --- a hostile writer never locks the tenant out ---


async def test_garbage_in_the_audit_stream_does_not_stop_connect(
    nats_server: eventwire.EmbeddedServer, root: str, raw: Client, caplog: pytest.LogCaptureFixture
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, name="a") as first:
        auditor_of(first).note("refused", "custom.x", "r", {})
        await wait_until(lambda: first.audit.head is not None)
    ack = await raw.jetstream().publish(audit_subject(root), b"garbage")

    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, name="b") as bus:
        finding = bus.audit.head
        assert finding is not None
        assert (finding.action, finding.reason, finding.actor) == (
            "audit.rejected", "audit-invalid", f"{TENANT}/b",
        )  # fmt: skip
        assert (finding.details["stream_seq"], finding.prev_seq) == (ack.seq, ack.seq - 1)
        assert bus.audit.stats.rejected["audit-invalid"] == 1
        auditor_of(bus).note("refused", "custom.y", "after", {})
        await wait_until(lambda: bus.audit.head is not None and bus.audit.head.reason == "after")
        report = await bus.audit.verify()
    assert f"bad message at stream seq {ack.seq} skipped (audit-invalid)" in caplog.text
    assert (report.records, report.rejected, report.intact) == (3, 1, True)
    assert report.findings[0].stream_seq == ack.seq


async def test_garbage_appended_while_a_bus_runs_is_skipped_by_its_next_record(
    bus: eventwire.Bus, raw: Client
) -> None:
    auditor = auditor_of(bus)
    auditor.note("refused", "custom.x", "before", {})
    await wait_until(lambda: bus.audit.head is not None)
    ack = await raw.jetstream().publish(audit_subject(bus.root), b"\x00junk")
    auditor.note("refused", "custom.x", "after", {})  # loses the race, re-reads, skips it
    await wait_until(lambda: auditor.log.stats.reported == 1)
    found = await records(bus)
    assert [(r.action, r.reason) for r in found] == [
        ("refused", "before"), ("refused", "after"), ("audit.rejected", "audit-invalid"),
    ]  # fmt: skip
    assert (found[1].seq, found[1].prev_seq) == (ack.seq + 1, ack.seq - 1)  # linked past it
    assert found[2].details["stream_seq"] == ack.seq
    assert (await bus.audit.verify()).intact


async def test_a_copied_record_does_not_stop_connect(
    nats_server: eventwire.EmbeddedServer, root: str, raw: Client
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as first:
        auditor_of(first).note("refused", "custom.x", "r", {})
        await wait_until(lambda: first.audit.head is not None)
    js = raw.jetstream()
    copy = (await js.get_msg(audit_stream_name(root), 1)).data or b""
    await js.publish(audit_subject(root), copy)  # the head, byte for byte, again

    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as bus:
        finding = bus.audit.head
        report = await bus.audit.verify()
    assert finding is not None
    assert (finding.reason, finding.details["stream_seq"], finding.prev_seq) == (
        "audit-replayed", 2, 1,
    )  # fmt: skip
    assert (report.records, report.rejected, report.intact) == (2, 1, True)


async def test_a_signing_bus_counts_only_records_of_its_keyring(
    nats_server: eventwire.EmbeddedServer, root: str, raw: Client
) -> None:
    keyring = Keyring()
    auditor = make_identity("auditor", keyring)
    stranger = Identity.generate(TENANT, "auditor")  # the same name, a key nobody trusts
    options: dict[str, Any] = {"tenant": TENANT, "root": root, "keyring": keyring}
    async with eventwire.connect(nats_server.url, audit_identity=auditor, **options) as first:
        auditor_of(first).note("refused", "custom.x", "r", {})
        await wait_until(lambda: first.audit.head is not None)
        head = first.audit.head
    assert head is not None
    forged = AuditChain.resume(head).append(f"{TENANT}/auditor", "ok", "s", "all is well")
    await raw.jetstream().publish(audit_subject(root), sign_record(forged, stranger))

    async with eventwire.connect(nats_server.url, audit_identity=auditor, **options) as bus:
        finding = bus.audit.head
        report = await bus.audit.verify()
    assert finding is not None
    assert (finding.reason, finding.details["stream_seq"], finding.prev_seq) == (
        "unknown-key", 2, 1,
    )  # fmt: skip
    assert (report.records, report.rejected, report.intact) == (2, 1, True)


async def test_a_signing_bus_needs_its_key_in_the_keyring(
    nats_server: eventwire.EmbeddedServer, root: str
) -> None:
    untrusted = Identity.generate(TENANT, "auditor")
    bus = eventwire.connect(nats_server.url, tenant=TENANT, root=root, audit_identity=untrusted)
    with pytest.raises(ConfigError, match="signed by `writers`"):
        async with bus:
            pass


async def test_a_flood_does_not_slow_connect_and_is_reported_by_the_writer_task(
    nats_server: eventwire.EmbeddedServer, root: str, raw: Client
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as first:
        auditor_of(first).note("refused", "custom.x", "r", {})
        await wait_until(lambda: first.audit.head is not None)
    js = raw.jetstream()
    flood = DEFAULT_MAX_SCAN + 10
    await asyncio.gather(*(js.publish(audit_subject(root), b"junk") for _ in range(flood)))

    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as bus:
        # connect() read DEFAULT_MAX_SCAN bad messages, the writer task reads on and reports
        await wait_until(lambda: bus.audit.stats.reported == MAX_REPORTED + 1, timeout=30)
        assert bus.audit.stats.rejected["audit-invalid"] == flood
        head = bus.audit.head
        assert head is not None
        assert (head.reason, head.details["count"]) == ("audit-many", flood - MAX_REPORTED)
        report = await bus.audit.verify()
    assert (report.records, report.rejected, report.intact) == (MAX_REPORTED + 2, flood, True)


# --- the writer task is owned: a death is logged and visible, close always completes ---


async def test_a_dead_writer_is_logged_and_refusals_are_counted(
    bus: eventwire.Bus, caplog: pytest.LogCaptureFixture
) -> None:
    auditor = auditor_of(bus)
    assert auditor.running
    writer = auditor._writer
    assert writer is not None
    writer.cancel()  # the writer dies (here: cancelled by someone else)
    await wait_until(lambda: not auditor.running)
    assert isinstance(auditor.error, asyncio.CancelledError)
    assert "the audit writer stopped" in caplog.text
    auditor.refused(Rejection("bad-signature", "x", f"{bus.root}.custom.x"))
    assert auditor.dropped == 1
    assert "audit writer stopped: refused" in caplog.text
    async with asyncio.timeout(10):
        await bus.close()  # completes, the writer being dead
    assert not auditor.running


async def test_a_failing_record_is_logged_and_the_writer_goes_on(
    bus: eventwire.Bus, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    auditor = auditor_of(bus)
    record = bus.audit.record
    failing = {"custom.boom"}

    async def flaky(actor: str, action: str, subject: str, *rest: Any) -> AuditRecord:
        if subject in failing:
            raise RuntimeError("a bug in the writer")
        return await record(actor, action, subject, *rest)

    monkeypatch.setattr(bus.audit, "record", flaky)
    auditor.note("refused", "custom.boom", "r", {})
    auditor.note("refused", "custom.fine", "r", {})
    await wait_until(lambda: bus.audit.head is not None)
    assert auditor.failures == 1
    assert auditor.running
    assert "could not record refused custom.boom (r)" in caplog.text
    assert "RuntimeError: a bug in the writer" in caplog.text
    assert [r.subject for r in await records(bus)] == ["custom.fine"]


async def test_close_completes_while_a_record_hangs(
    bus: eventwire.Bus, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    auditor = auditor_of(bus)
    started = asyncio.Event()

    async def hangs(*args: Any) -> AuditRecord:
        started.set()
        await asyncio.Event().wait()  # the audit stream never answers
        raise AssertionError("unreachable")

    monkeypatch.setattr(bus.audit, "record", hangs)
    auditor.note("refused", "custom.x", "r", {})
    auditor.note("refused", "custom.y", "r", {})
    await started.wait()
    async with asyncio.timeout(10):
        await auditor.close(drain_timeout=0.05)
    assert not auditor.running
    assert auditor.error is None  # stopped by close: not a death
    assert "1 audit records not written at close" in caplog.text
