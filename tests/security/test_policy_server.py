"""Compiled policy permissions, enforced by a REAL nats-server (no mocks).

One server for the module, configured by ``render_server_config`` with tenant ``acme``: the
agents ``summarizer``, ``writer`` and ``courier`` get ``compile_permissions`` of the policy
below; ``admin`` has every right (``>``); ``prefixy`` holds a hand-written permission that
shows why consumers are listed by name (NATS wildcards are whole tokens only).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from eventwire import find_nats_server
from eventwire_security import (
    Actor,
    Policy,
    compile_permissions,
    consumer_filters,
    consumer_name,
    private_inbox_prefix,
    render_server_config,
)
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

POLICY = Policy.from_toml(
    """
version = 1

[[rule]]
principal = "agent:summarizer"
publish = ["task.*.completed"]
consume = ["capability.summarize.*"]

[[rule]]
principal = "agent:writer"
publish = ["knowledge.>"]
consume = ["knowledge.>"]
deny_publish = ["knowledge.secret.*"]

[[rule]]
principal = "agent:courier"
publish = ["status.*"]

[[rule]]
principal = "*"
deny_publish = ["system.>"]
"""
)
ACTORS = {
    "summarizer": Actor("acme", "summarizer", capabilities=("summarize",)),
    "writer": Actor("acme", "writer"),
    "courier": Actor("acme", "courier"),
}
STREAM = "ew-events"
REFUSED = 0.5  # seconds to wait for an answer the server must never send
ADMIN: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
SUMMARIZER_CONSUMER = consumer_name("summarizer", "capability.summarize.*")
PREFIXY: dict[str, Any] = {
    "publish": {"allow": ["_INBOX.>", f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.summarizer-*"]},
    "subscribe": {"allow": ["_INBOX.>"]},
}


def _password(user: str) -> str:
    return f"pw-{user}-Secr3t"


def _accounts() -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    users: list[tuple[str, str, dict[str, Any]]] = [
        (
            name,
            _password(name),
            dict(compile_permissions(POLICY, actor, private_inbox=name == "courier")),
        )
        for name, actor in ACTORS.items()
    ]
    users += [("admin", _password("admin"), ADMIN), ("prefixy", _password("prefixy"), PREFIXY)]
    return {"acme": users}


def _wait_for_port(ports_dir: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"nats-server exited with {proc.returncode}"
        for path in ports_dir.glob(f"*_{proc.pid}.ports"):
            urls = json.loads(path.read_text()).get("nats") or []
            if urls:
                port = int(str(urls[0]).rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return port
        time.sleep(0.02)
    raise AssertionError("nats-server did not become ready")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("policy-server")
    config = base / "server.conf"
    text = render_server_config(_accounts(), store_dir=str(base / "js"), port=-1)
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    with (base / "nats-server.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(find_nats_server()), "-c", str(config), "--ports_file_dir", str(base)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield f"nats://127.0.0.1:{_wait_for_port(base, proc)}"
    finally:  # the finalizer: stop the server, whatever the tests did
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Conn:
    """A connection and every error the server reported to it."""

    nc: Client
    errors: list[Exception] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    def violations(self) -> list[str]:
        return [
            str(error).lower()
            for error in self.errors
            if isinstance(error, nats.errors.Error)
            and "permissions violation" in str(error).lower()
        ]

    async def refused(self, subject: str, what: str = "publish to") -> None:
        """Wait until the server reported a permissions violation for ``subject``."""
        expected = f'permissions violation for {what} "{subject}"'.lower()
        await wait_until(lambda: any(expected in text for text in self.violations()))


async def _connect(url: str, user: str, **options: Any) -> Conn:
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = await nats.connect(url, user=user, password=_password(user), error_cb=on_error, **options)
    return Conn(nc, errors)


@pytest.fixture(scope="module")
async def conns(server_url: str) -> AsyncIterator[dict[str, Conn]]:
    made = {user: await _connect(server_url, user) for user in ("admin", "summarizer", "writer")}
    made["prefixy"] = await _connect(server_url, "prefixy")
    courier = private_inbox_prefix(ACTORS["courier"])
    made["courier"] = await _connect(server_url, "courier", inbox_prefix=courier)
    admin = made["admin"].js
    await admin.add_stream(name=STREAM, subjects=["ew.>"])
    await admin.create_key_value(bucket="ew-agents")
    for name, actor in ACTORS.items():
        for pattern in consumer_filters(POLICY, actor):
            config = ConsumerConfig(
                durable_name=consumer_name(name, pattern),
                filter_subject=f"ew.{pattern}",
                ack_policy=AckPolicy.EXPLICIT,
            )
            await admin.add_consumer(STREAM, config)
    yield made
    for conn in made.values():
        await conn.nc.close()


async def _subscribed(nc: Client) -> None:
    """Return once the server has every SUB this client sent so far.

    One ``flush()`` is not enough with nats-py 2.16: it writes its PING straight to the socket
    while SUB commands may still wait in the client's pending buffer for the flusher task,
    so the PONG can come back before the server saw the SUB. The second PING is written after.
    """
    await nc.flush()
    await nc.flush()


async def _stored(admin: Conn, subject: str) -> int:
    info = await admin.js.stream_info(STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_admin_created_the_events_stream(conns: dict[str, Conn]) -> None:
    info = await conns["admin"].js.stream_info(STREAM)
    assert info.config.subjects == ["ew.>"]


async def test_allowed_publish_is_stored(conns: dict[str, Conn]) -> None:
    summarizer = conns["summarizer"]
    ack = await summarizer.js.publish("ew.task.sum.completed", b"done", timeout=5)
    assert ack.stream == STREAM
    assert await _stored(conns["admin"], "ew.task.sum.completed") >= 1
    assert summarizer.violations() == []


@pytest.mark.parametrize("subject", ["ew.system.x", "ew.knowledge.x"])
async def test_publish_refused_by_the_server(conns: dict[str, Conn], subject: str) -> None:
    summarizer = conns["summarizer"]
    with pytest.raises(nats.errors.TimeoutError):
        await summarizer.js.publish(subject, b"nope", timeout=REFUSED)
    await summarizer.refused(subject)
    error = next(e for e in summarizer.errors if subject in str(e))
    assert type(error) is nats.errors.Error
    assert "permissions violation" in str(error).lower()  # nats-py lower-cases the server text
    assert await _stored(conns["admin"], subject) == 0


async def test_server_deny_wins_over_a_broader_allow(conns: dict[str, Conn]) -> None:
    writer = conns["writer"]
    await writer.js.publish("ew.knowledge.ml", b"fine", timeout=5)
    with pytest.raises(nats.errors.TimeoutError):
        await writer.js.publish("ew.knowledge.secret.x", b"nope", timeout=REFUSED)
    await writer.refused("ew.knowledge.secret.x")
    assert await _stored(conns["admin"], "ew.knowledge.secret.x") == 0
    assert await _stored(conns["admin"], "ew.knowledge.ml") == 1


@pytest.mark.parametrize(
    "api",
    [
        f"$JS.API.CONSUMER.CREATE.{STREAM}.sneaky",
        f"$JS.API.CONSUMER.CREATE.{STREAM}.sneaky.ew.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.sneaky",
    ],
)
async def test_agent_cannot_create_a_consumer(conns: dict[str, Conn], api: str) -> None:
    summarizer = conns["summarizer"]
    config = {"stream_name": STREAM, "config": {"durable_name": "sneaky", "ack_policy": "none"}}
    with pytest.raises(nats.errors.TimeoutError):
        await summarizer.nc.request(api, json.dumps(config).encode(), timeout=REFUSED)
    await summarizer.refused(api)
    with pytest.raises(nats.errors.TimeoutError):
        await summarizer.js.add_consumer(STREAM, durable_name="sneaky2", timeout=REFUSED)
    names = {info.name for info in await conns["admin"].js.consumers_info(STREAM)}
    assert names.isdisjoint({"sneaky", "sneaky2"})


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (f"$JS.API.STREAM.MSG.GET.{STREAM}", {"seq": 1}),
        (f"$JS.API.DIRECT.GET.{STREAM}", {"seq": 1}),
        # the registry (KV_ew-agents) is readable by the tenant; the handled ids are not
        ("$JS.API.STREAM.MSG.GET.KV_ew-processed", {"seq": 1}),
        ("$JS.API.DIRECT.GET.KV_ew-processed", {"seq": 1}),
        ("$JS.API.STREAM.MSG.GET.KV_ew-seen", {"seq": 1}),
        ("$JS.API.STREAM.LIST", {}),
        ("$JS.API.STREAM.NAMES", {}),
    ],
)
async def test_agent_cannot_read_the_stream(
    conns: dict[str, Conn], api: str, body: dict[str, Any]
) -> None:
    summarizer = conns["summarizer"]
    with pytest.raises(nats.errors.TimeoutError):
        await summarizer.nc.request(api, json.dumps(body).encode(), timeout=REFUSED)
    await summarizer.refused(api)


async def test_agent_cannot_subscribe_to_events(conns: dict[str, Conn]) -> None:
    summarizer = conns["summarizer"]
    await summarizer.nc.subscribe("ew.>")
    await summarizer.nc.flush()
    await summarizer.refused("ew.>", "subscription to")


async def test_agent_pulls_and_acks_its_own_consumer(conns: dict[str, Conn]) -> None:
    admin, summarizer = conns["admin"], conns["summarizer"]
    before = len(summarizer.violations())
    await admin.js.publish("ew.capability.summarize.help", b"please", timeout=5)
    assert (await summarizer.js.stream_info(STREAM)).config.name == STREAM
    pull = await summarizer.js.pull_subscribe_bind(SUMMARIZER_CONSUMER, stream=STREAM)
    (msg,) = await pull.fetch(1, timeout=5)
    assert (msg.subject, msg.data) == ("ew.capability.summarize.help", b"please")
    await msg.ack_sync(timeout=5)
    await pull.unsubscribe()
    info = await admin.js.consumer_info(STREAM, SUMMARIZER_CONSUMER)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert len(summarizer.violations()) == before


async def test_agent_cannot_pull_or_ack_another_agents_consumer(conns: dict[str, Conn]) -> None:
    summarizer = conns["summarizer"]
    other = consumer_name("writer", "knowledge.>")
    inbox = summarizer.nc.new_inbox()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{other}"
    await summarizer.nc.publish(next_subject, b'{"batch": 1}', reply=inbox)
    await summarizer.refused(next_subject)
    ack = f"$JS.ACK.{STREAM}.{other}.1.1.1.1.0"
    await summarizer.nc.publish(ack, b"+ACK")
    await summarizer.refused(ack)


async def test_wildcards_are_whole_tokens_so_consumers_are_listed_by_name(
    conns: dict[str, Conn],
) -> None:
    # PREFIXY allows MSG.NEXT on "summarizer-*": the server reads it as a literal token.
    prefixy = conns["prefixy"]
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{SUMMARIZER_CONSUMER}"
    await prefixy.nc.publish(next_subject, b'{"batch": 1}', reply=prefixy.nc.new_inbox())
    await prefixy.refused(next_subject)


async def test_agent_puts_only_its_own_registry_entries(conns: dict[str, Conn]) -> None:
    summarizer = conns["summarizer"]
    kv = await summarizer.js.key_value("ew-agents")
    assert await kv.put("summarizer.i1", b"entry") >= 1
    with pytest.raises(nats.errors.TimeoutError):
        await summarizer.js.publish("$KV.ew-agents.writer.i1", b"forged", timeout=REFUSED)
    await summarizer.refused("$KV.ew-agents.writer.i1")


async def test_shared_inbox_prefix_lets_agents_read_each_others_replies(
    conns: dict[str, Conn],
) -> None:
    # The limitation that private_inbox=True removes: with the default "_INBOX" every agent
    # may subscribe to "_INBOX.>" and so sees the JetStream acks (and pull deliveries) of
    # every other agent of the account.
    seen: list[Msg] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg)

    sub = await conns["writer"].nc.subscribe("_INBOX.>", cb=sniff)
    await _subscribed(conns["writer"].nc)
    await conns["summarizer"].js.publish("ew.task.sniffed.completed", b"x", timeout=5)
    await wait_until(lambda: any(b'"stream":"ew-events"' in msg.data for msg in seen))
    await sub.unsubscribe()


async def test_private_inbox(conns: dict[str, Conn]) -> None:
    admin, courier, writer = conns["admin"], conns["courier"], conns["writer"]
    seen: list[Msg] = []

    async def sniff(msg: Msg) -> None:
        seen.append(msg)

    sniffer = await writer.nc.subscribe("_INBOX.>", cb=sniff)
    await _subscribed(writer.nc)
    ack = await courier.js.publish("ew.status.up", b"up", timeout=5)  # ack on _INBOX_courier
    assert ack.stream == STREAM
    await _subscribed(writer.nc)  # anything the server sent the sniffer before has arrived
    assert seen == [], "another agent saw the courier's ack"
    await sniffer.unsubscribe()
    await courier.nc.subscribe("_INBOX.>")
    await courier.nc.flush()
    await courier.refused("_INBOX.>", "subscription to")
    await courier.nc.publish("_INBOX.someone.x", b"a fake reply")  # no reply without a request
    await courier.refused("_INBOX.someone.x")

    async def answer(msg: Msg) -> None:
        await msg.respond(b"pong")  # allowed by allow_responses, not by a publish right

    await courier.nc.subscribe("ew.direct.acme.courier", cb=answer)
    await _subscribed(courier.nc)
    replies = await admin.nc.subscribe("_INBOX.admin-test")
    await _subscribed(admin.nc)
    await admin.nc.publish("ew.direct.acme.courier", b"ping", reply="_INBOX.admin-test")
    async with asyncio.timeout(5):
        while True:
            reply = await replies.next_msg(timeout=5)
            if reply.data == b"pong":  # the stream (subjects ew.>) also acks the request
                break
    await replies.unsubscribe()
