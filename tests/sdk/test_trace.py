"""``eventwire trace`` and ``trace_flow``: the causation tree of a flow across three agents."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    Agent,
    CustomEvent,
    Event,
    InvalidArgument,
    NotFound,
    trace_flow,
)
from eventwire_security.hazmat import sign_detached
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk.test_cli import cli
from tests.sdk.test_tail import key_file

if TYPE_CHECKING:
    from pathlib import Path

    from eventwire import EmbeddedServer, PublishAck


async def three_agent_flow(bus: eventwire.Bus) -> tuple[list[Agent], list[str], PublishAck]:
    """A publishes ``custom.flow.start``; B reacts with ``custom.flow.step``; C reacts to B
    with ``custom.flow.done``. Returns the agents and the three event ids, in order, and the
    ack of a forgery (an untrusted key) claiming to be B's reaction in the same flow."""
    a, b, c = (Agent(name, identity=make_identity(name, bus.keyring)) for name in "abc")
    ids: list[str] = []

    @b.on("custom.flow.start")
    async def react(event: Event) -> None:
        ids.append((await b.publish(CustomEvent("custom.flow.step", "flow.step", 2))).event_id)

    @c.on("custom.flow.step")
    async def finish(event: Event) -> None:
        ids.append((await c.publish(CustomEvent("custom.flow.done", "flow.done", 3))).event_id)

    async with a.serve(bus), b.serve(bus), c.serve(bus):
        start = await a.publish(CustomEvent("custom.flow.start", "flow.start", 1))
        ids.insert(0, start.event_id)
        await wait_until(lambda: len(ids) == 3)
    await bus.publish(CustomEvent("custom.flow.start", "flow.start", 0), identity=c.identity)
    forged = await bus.publish(
        CustomEvent("custom.flow.step", "flow.step", 666),
        identity=make_identity("b"),  # claims to be b, with a key nobody trusts
        correlation_id=ids[0],
        causation_id=ids[0],
    )
    return [a, b, c], ids, forged


def shape(node: dict[str, Any]) -> tuple[str, bool, list[Any]]:
    """(id, verified, children) of a JSON tree node, recursively."""
    ident = node["id"] if node["verified"] else node["claimed"]["id"]
    return ident, node["verified"], [shape(child) for child in node["children"]]


async def test_trace_rebuilds_a_three_agent_flow_and_shows_the_forgery_refused(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    agents, (first, step, done), forged = await three_agent_flow(bus)
    keys: list[str] = []
    for agent in agents:
        keys += ["--keyring", key_file(tmp_path, agent.identity)]
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT, *keys)

    code, out = await cli("trace", first, *where, "--json")
    code_by_id, out_by_id = await cli("trace", done, *where, "--json")

    assert code == 0, out
    doc = json.loads(out)
    assert (doc["correlation"], doc["events"], doc["refused"]) == (first, 4, 1)
    [top] = doc["tree"]
    assert shape(top) == (
        first, True, [(step, True, [(done, True, [])]), (forged.event_id, False, [])]
    )  # fmt: skip
    assert top["source"] == f"{TENANT}/a"
    assert top["offset_ms"] == 0
    assert top["gap_ms"] is None
    b_node = top["children"][0]
    assert b_node["source"] == f"{TENANT}/b"
    assert b_node["kid"] == agents[1].identity.kid
    assert b_node["gap_ms"] >= 0
    assert b_node["children"][0]["source"] == f"{TENANT}/c"
    assert b_node["children"][0]["causationid"] == step
    refused = top["children"][1]
    assert refused["refusal"]["reason"] == "unknown-key"
    assert refused["claimed"]["source"] == f"{TENANT}/b"
    assert refused["children"] == []
    assert code_by_id == 0, out_by_id
    assert json.loads(out_by_id) == doc  # an event's id finds its whole flow


async def test_trace_prints_a_tree_with_timings(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    agents, (first, step, done), _ = await three_agent_flow(bus)
    code, out = await cli(
        "trace", first, "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, agents[0].identity),
        "--keyring", key_file(tmp_path, agents[1].identity),
    )  # fmt: skip
    assert code == 0, out
    assert f"flow {first}: 4 events, 2 refused" in out  # c's key was not given: refused
    lines = out.splitlines()
    [a_line] = [text for text in lines if first in text and "flow " not in text]
    [b_line] = [text for text in lines if step in text]
    assert "by acme/a" in a_line
    assert "+0.0 ms" in a_line
    assert "by acme/b" in b_line
    assert "(gap " in b_line
    [c_line] = [text for text in lines if done in text]
    assert "REFUSED unknown-key" in c_line
    assert "by acme/c?" in c_line
    assert lines.index(a_line) < lines.index(b_line) < lines.index(c_line)


async def test_trace_api_finds_nothing_or_refuses_bad_ids(bus: eventwire.Bus, root: str) -> None:
    await bus.publish(CustomEvent("custom.x", "x", 1), identity=make_identity("a", bus.keyring))
    with pytest.raises(NotFound):
        await trace_flow(bus.connection, "0190b1c2-0000-7000-8000-000000000000", root=root)
    with pytest.raises(NotFound):
        await trace_flow(bus.connection, "not-a-uuid", root=root, tenant=TENANT)
    with pytest.raises(InvalidArgument):
        await trace_flow(bus.connection, "", root=root)


async def test_trace_unknown_id_is_one_line(nats_server: EmbeddedServer, root: str) -> None:
    code, out = await cli("trace", "nope", "--url", nats_server.url, "--root", root)
    assert code == 1
    assert out.startswith("error:")
    assert "Traceback" not in out


async def test_trace_finds_an_event_that_spells_the_correlation_with_escapes(
    bus: eventwire.Bus, root: str
) -> None:
    """The scan skips bodies without the id's bytes, unverified; a signer may escape the
    id's characters in JSON, so such bodies are still verified and placed."""
    alice = make_identity("alice", bus.keyring)
    first = await bus.publish(CustomEvent("custom.e", "e", 1), identity=alice)
    signed = await bus.publish(
        CustomEvent("custom.e", "e", 2),
        identity=alice,
        correlation_id=first.event_id,
        causation_id=first.event_id,
    )
    stored = await bus.jetstream.get_msg(bus.stream, signed.seq)
    claims = json.loads(stored.data or b"")
    claims["id"] = claims["id"][:-4] + "beef"
    spelled = "".join(f"\\u{ord(ch):04x}" for ch in first.event_id)
    text = json.dumps(claims, separators=(",", ":"))
    body = text.replace(f'"{first.event_id}"', f'"{spelled}"').encode()
    assert first.event_id.encode() not in body  # correlation and causation both escaped
    headers = {SIGNATURE_HEADER: sign_detached(body, alice), "Nats-Msg-Id": "escaped"}
    await bus.jetstream.publish(f"{root}.custom.e", body, headers=headers)

    flow = await trace_flow(bus.connection, first.event_id, root=root, tenant=TENANT,
                            keyring=bus.keyring)  # fmt: skip

    ids = [(node.item.attribute("id"), node.item.verified) for node, _ in flow.walk()]
    assert ids == [(first.event_id, True), (signed.event_id, True), (claims["id"], True)]
