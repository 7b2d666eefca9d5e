"""The command line, run as a user would: a separate process against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import TYPE_CHECKING

import nats
from nats.js.api import StorageType, StreamConfig

import eventwire
from eventwire import CustomEvent, Event, RetryPolicy, Unprocessable
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_demo_runs_and_refuses_the_forgeries() -> None:
    code, out = await cli("demo")
    assert code == 0, out
    assert out.count("REFUSED") == 2
    assert "unknown-key" in out
    assert "bad-signature" in out
    assert "demo complete: 9 events verified, 2 forgeries refused" in out


async def test_dlq_list_show_redrive_purge(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str
) -> None:
    alice = make_identity("alice", bus.keyring)

    async def reject(event: Event) -> None:
        raise Unprocessable("schema v1 is gone")

    async with bus.subscribe("custom.x", reject, durable="x", retry=RetryPolicy(2)) as sub:
        await bus.publish(CustomEvent("custom.x", "x", 1), identity=alice)
        await bus.publish(CustomEvent("custom.x", "x", 2), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 2)
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT)

    code, out = await cli("dlq", "list", *where)
    assert code == 0, out
    assert out.count("unprocessable") == 2
    assert "schema v1 is gone" in out
    code, out = await cli("dlq", "show", "1", *where)
    assert code == 0, out
    assert "Nats-Msg-Id" in out
    assert f"{root}.custom.x" in out
    code, out = await cli("dlq", "redrive", "1", *where)
    assert (code, "redriven 1 -> stream seq 3" in out) == (0, True), out
    code, out = await cli("dlq", "redrive", *where)
    assert code == 2
    assert "give one entry id, or --all" in out
    code, out = await cli("dlq", "show", "1", *where)
    assert code == 1
    assert "no dead letter 1" in out
    code, out = await cli("dlq", "purge", *where)
    assert (code, "purged 1 dead letters" in out) == (0, True), out


async def test_streams_diff_and_apply(nats_server: EmbeddedServer, root: str) -> None:
    where = ("--url", nats_server.url, "--root", root)
    code, out = await cli("streams", "diff", *where)
    assert (code, out.count(" missing "), "7 of 7 drift" in out) == (1, 7, True), out
    code, out = await cli("streams", "apply", *where)
    assert (code, out.count(": created")) == (0, 7), out
    for name in ("stream '{}-audit'", "bucket '{}-agents'", "bucket '{}-processed'"):
        assert name.format(root) + ": created" in out
    code, out = await cli("streams", "diff", *where)
    assert (code, out.count(" matches "), "no drift" in out) == (0, 7, True), out
    # Someone changes the events' duplicate window and the registry's ttl on the server.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for stream, change in (
            (f"{root}-events", {"duplicate_window": 5.0}),
            (f"KV_{root}-agents", {"max_age": 30.0}),
        ):
            config = (await js.stream_info(stream)).config
            await js.update_stream(dataclasses.replace(config, **change))
    finally:
        await nc.close()
    code, out = await cli("streams", "diff", *where)
    assert (code, out.count(" differs "), out.count(" matches ")) == (1, 2, 5), out
    assert "duplicate_window" in out
    assert "ttl" in out
    assert "2 of 7 drift" in out
    code, out = await cli("streams", "apply", *where)
    assert code == 0, out
    assert f"stream '{root}-events': updated duplicate_window: server has 5.0" in out
    assert f"bucket '{root}-agents': updated ttl: server has 30.0, code wants 15.0" in out
    assert out.count(": matches") == 5
    code, out = await cli("streams", "diff", *where)
    assert code == 0, out


async def test_streams_apply_names_what_cannot_change(
    nats_server: EmbeddedServer, root: str
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        # The events stream as an operator might have made it by hand, in memory.
        subjects = [f"{root}.knowledge.>"]
        config = StreamConfig(name=f"{root}-events", subjects=subjects, storage=StorageType.MEMORY)
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()
    where = ("--url", nats_server.url, "--root", root)
    code, out = await cli("streams", "diff", *where)
    assert (code, "storage" in out, "recreate" in out) == (1, True, True), out
    code, out = await cli("streams", "apply", *where)
    assert code == 1, out
    assert f"stream '{root}-events': storage: server has 'memory', code wants 'file': " in out
    assert "cannot change in place" in out
    assert out.count(": created") == 6
    code, out = await cli("streams", "apply", *where, "--replicas", "3")  # one server only
    assert (code, out.count("the server refused to update")) == (1, 7), out


async def test_streams_never_print_credentials(nats_server: EmbeddedServer, root: str) -> None:
    secret_url = nats_server.url.replace("nats://", "nats://bob:s3cret-pw@")
    code, out = await cli("streams", "diff", "--url", secret_url, "--root", root)
    assert (code, "nats://***@127.0.0.1:" in out) == (1, True), out
    code, out = await cli("streams", "apply", "--url", secret_url, "--root", root)
    assert code == 0, out
    for url in ("nats://bob:s3cret-pw@127.0.0.1:1", "bob:s3cret-pw@127.0.0.1:1"):
        code, out = await cli("streams", "diff", "--url", url, "--root", root)
        assert (code, "error:" in out) == (2, True), out
        assert "s3cret" not in out
    code, out = await cli("streams", "diff", "--url", secret_url, "--root", "a.b")
    assert (code, "root: 'a.b' is not a subject token" in out) == (2, True), out


async def test_secure_demo_shows_sealing_policy_and_tenancy_in_the_audit_log() -> None:
    code, out = await cli("demo", "--secure")
    assert code == 0, out
    assert "acme/alice  reads 'Q3'" in out
    assert "not for it: no plaintext" in out
    assert "Forbidden" in out
    assert "policy-denied" in out
    assert "wrong-tenant" in out
    assert out.count("audit chain intact, 1 records") == 2
