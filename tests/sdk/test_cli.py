"""The command line, run as a user would: a separate process against a real server."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import nats

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
    assert code == 1
    assert "absent" in out
    code, out = await cli("streams", "apply", *where)
    assert (code, f"{root}-events: ok" in out) == (0, True), out
    code, out = await cli("streams", "diff", *where)
    assert (code, "no drift" in out) == (0, True), out
    # Someone changes the duplicate window on the server: diff names it, apply fixes it.
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        config = (await js.stream_info(f"{root}-events")).config
        config.duplicate_window = 5.0
        await js.update_stream(config)
    finally:
        await nc.close()
    code, out = await cli("streams", "diff", *where)
    assert (code, "duplicate_window" in out) == (1, True), out
    code, out = await cli("streams", "apply", *where)
    assert (code, "duplicate_window" in out) == (0, True), out
    code, out = await cli("streams", "diff", *where)
    assert code == 0, out


async def test_secure_demo_shows_sealing_policy_and_tenancy_in_the_audit_log() -> None:
    code, out = await cli("demo", "--secure")
    assert code == 0, out
    assert "acme/alice  reads 'Q3'" in out
    assert "not for it: no plaintext" in out
    assert "Forbidden" in out
    assert "policy-denied" in out
    assert "wrong-tenant" in out
    assert out.count("audit chain intact, 1 records") == 2
