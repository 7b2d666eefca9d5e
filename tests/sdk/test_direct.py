"""Direct request-reply, signed both ways, on a real server."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import (
    Event,
    HelpRequested,
    Keyring,
    NoResponders,
    RemoteError,
    RequestTimeout,
    TaskCompleted,
)
from tests.conftest import TENANT, make_identity

if TYPE_CHECKING:
    from eventwire import EmbeddedServer

QUESTION = HelpRequested(capability="summarize", question="tl;dr?")


async def test_request_gets_a_verified_reply_bound_to_the_request(bus: eventwire.Bus) -> None:
    asker = make_identity("asker", bus.keyring)
    answerer = make_identity("answerer", bus.keyring)
    asked: list[Event] = []

    async def answer(event: Event) -> TaskCompleted:
        asked.append(event)
        return TaskCompleted(task_type="summarize", task_id=event.id, result="short")

    await bus.serve_requests(answerer, answer)
    reply = await bus.request("answerer", QUESTION, identity=asker, timeout=5)
    assert [e.source for e in asked] == [f"{TENANT}/asker"]
    assert asked[0].subject == f"direct.{TENANT}.answerer"
    assert reply.source == f"{TENANT}/answerer"
    assert reply.causationid == asked[0].id
    assert reply.correlationid == asked[0].correlationid
    assert reply.parse(TaskCompleted).result == "short"


async def test_handler_error_becomes_a_remote_error(bus: eventwire.Bus) -> None:
    asker = make_identity("asker", bus.keyring)
    answerer = make_identity("answerer", bus.keyring)

    async def broken(event: Event) -> TaskCompleted:
        raise ValueError("cannot summarize")

    await bus.serve_requests(answerer, broken)
    with pytest.raises(RemoteError) as error:
        await bus.request("answerer", QUESTION, identity=asker, timeout=5)
    assert error.value.code == "handler-failed"
    assert error.value.target == "answerer"
    assert "cannot summarize" in str(error.value)


async def test_no_responders_and_timeouts_are_typed(bus: eventwire.Bus) -> None:
    asker = make_identity("asker", bus.keyring)
    slow_agent = make_identity("slow", bus.keyring)
    with pytest.raises(NoResponders):
        await bus.request("nobody", QUESTION, identity=asker, timeout=2)

    async def slow(event: Event) -> TaskCompleted:
        await asyncio.sleep(1)
        return TaskCompleted(task_type="t", task_id="1")

    await bus.serve_requests(slow_agent, slow)
    with pytest.raises(RequestTimeout) as timeout:
        await bus.request("slow", QUESTION, identity=asker, timeout=0.2)
    assert isinstance(timeout.value, TimeoutError)


async def test_untrusted_caller_is_refused_with_a_signed_error(
    nats_server: EmbeddedServer, root: str
) -> None:
    stranger = make_identity("stranger")
    answerer = make_identity("answerer")
    called: list[Event] = []

    async def answer(event: Event) -> TaskCompleted:
        called.append(event)
        return TaskCompleted(task_type="t", task_id="1")

    # The answerer trusts nobody else; the stranger trusts the answerer.
    async with (
        eventwire.connect(
            nats_server.url, tenant=TENANT, root=root, keyring=Keyring.of(answerer)
        ) as server_side,
        eventwire.connect(
            nats_server.url, tenant=TENANT, root=root, keyring=Keyring.of(stranger, answerer)
        ) as client_side,
    ):
        await server_side.serve_requests(answerer, answer)
        with pytest.raises(RemoteError) as refused:
            await client_side.request("answerer", QUESTION, identity=stranger, timeout=5)
        assert server_side.security.rejected == {"unknown-key": 1}
    assert refused.value.code == "refused"
    assert called == []
