"""A compromised agent appends to the audit stream (every agent may: it appends its own
refusals) on the server started from the compiled config. Whatever ``mallory`` appends is a
finding: the victims still connect, report it in the chain, and the chain stays intact."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.errors
import pytest

from eventwire import AuditReport, FindingKind
from tests.compiled.conftest import ROOT, World, violations
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client

STREAM = f"{ROOT}-audit"
SUBJECT = f"{ROOT}.audit.log"
REFUSED = 0.5  # seconds to wait for an answer the server must never send


@pytest.fixture
async def mallory(world: World) -> AsyncIterator[Client]:
    nc = await world.raw("mallory")
    yield nc
    await nc.close()


def found(report: AuditReport) -> set[tuple[int, FindingKind, str]]:
    return {(f.stream_seq, f.kind, f.reason) for f in report.findings}


async def test_mallory_appends_garbage_and_the_victims_still_connect(
    world: World, mallory: Client
) -> None:
    js = mallory.jetstream()
    garbage = await js.publish(SUBJECT, b"garbage", timeout=5)  # her permissions allow it

    async with world.bus("summarizer") as victim:  # bind-only, under the compiled permissions
        finding = victim.audit.head
        assert finding is not None
        assert (finding.action, finding.reason, finding.actor) == (
            "audit.rejected", "audit-invalid", "acme/summarizer",
        )  # fmt: skip
        assert (finding.details["stream_seq"], finding.seq) == (garbage.seq, garbage.seq + 1)
        assert victim.audit.stats.rejected["audit-invalid"] == 1

    # She may read the stream's messages one by one: she re-publishes that valid record.
    copied = await js.get_msg(STREAM, finding.seq)
    replay = await js.publish(SUBJECT, copied.data or b"", timeout=5)

    async with world.bus("writer") as other:
        head = other.audit.head
        assert head is not None
        assert (head.reason, head.details["stream_seq"]) == ("audit-replayed", replay.seq)
        assert head.prev_seq == finding.seq  # linked to the last valid record, past the copy

    report = await world.admin.audit.verify()
    assert report.intact
    assert {
        (garbage.seq, FindingKind.REJECTED, "audit-invalid"),
        (replay.seq, FindingKind.REJECTED, "audit-replayed"),
    } <= found(report)
    assert report.head is not None
    assert report.head.seq > replay.seq


async def test_mallory_cannot_remove_what_she_appended(world: World, mallory: Client) -> None:
    garbage = await mallory.jetstream().publish(SUBJECT, b"\x00\x01", timeout=5)
    subject = f"$JS.API.STREAM.MSG.DELETE.{STREAM}"
    with pytest.raises(nats.errors.TimeoutError):
        await mallory.request(subject, b'{"seq": %d}' % garbage.seq, timeout=REFUSED)
    await wait_until(lambda: any(subject.lower() in v for v in violations(mallory)))
    async with world.bus("summarizer") as victim:
        head = victim.audit.head
    assert head is not None
    assert (head.reason, head.details["stream_seq"]) == ("audit-invalid", garbage.seq)
