"""One-of-N work distribution by capability: subjects, the shared consumer, its status."""

from __future__ import annotations

import pytest

import eventwire
from eventwire import CustomEvent, InvalidArgument, WorkStatus
from tests.conftest import make_identity


def test_one_of_n_subjects_map_to_and_from_capability_subjects() -> None:
    assert eventwire.work_subject("capability.summarize.help") == "capability.summarize.work.help"
    assert eventwire.broadcast_subject("capability.summarize.work.help") == (
        "capability.summarize.help"
    )
    assert eventwire.broadcast_subject("capability.summarize.help") is None
    assert eventwire.broadcast_subject("custom.summarize.work.help") is None


@pytest.mark.parametrize(
    "subject", ["knowledge.ml", "capability.summarize", "capability.a.b.c", "capability.a.work"]
)
def test_one_of_n_is_only_for_capability_verbs(subject: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^deliver: one-of-N delivery is for"):
        eventwire.work_subject(subject)


async def test_work_waits_in_the_stream_before_anyone_serves(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    for n in range(3):
        await bus.publish(CustomEvent("capability.summarize.work.help", "t", n), identity=alice)
    status = await bus.work_status("summarize")
    assert status == WorkStatus("summarize", 3, 0, 0, 0, consumer=False)
    assert status.nobody_serving


async def test_work_status_of_a_bad_capability_name_is_refused(bus: eventwire.Bus) -> None:
    with pytest.raises(InvalidArgument, match="capability"):
        await bus.work_status("no.dots")
