"""``eventwire demo --secure``: two tenants, a sealed event, a denied publish, a replayed
event from the other tenant, each refusal visible in the audit log."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import nats
from rich.table import Table

from eventwire import (
    SIGNATURE_HEADER,
    Agent,
    EmbeddedServer,
    Event,
    Forbidden,
    Keyring,
    KnowledgeShared,
    Policy,
    connect,
)

if TYPE_CHECKING:
    from rich.console import Console

    from eventwire import Bus

POLICY = Policy.from_toml(
    """
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*", "knowledge.>"]
consume = ["agent.lifecycle.*", "knowledge.>"]
deny_publish = ["knowledge.secret.>"]
"""
)


def _agents(tenant: str, *names: str) -> list[Agent]:
    return [Agent(name, tenant=tenant) for name in names]


async def _watch(agent: Agent, console: Console, done: asyncio.Event) -> None:
    @agent.on("knowledge.>")
    async def read(event: Event) -> None:
        if event.readable:
            text = f"reads [green]{event.parse(KnowledgeShared).content!r}[/green]"
        else:
            text = "[yellow]sees a sealed event, not for it: no plaintext[/yellow]"
        console.print(f"  {agent.tenant}/{agent.name:<6} {text}")
        done.set()


async def run_secure_demo(console: Console) -> None:
    alice, bob, carol = _agents("acme", "alice", "bob", "carol")
    (eve,) = _agents("globex", "eve")
    seen = asyncio.Event()
    for reader in (alice, carol, eve):
        await _watch(reader, console, seen)
    acme_keys = Keyring.of(alice.identity, bob.identity, carol.identity)
    # globex even trusts bob's key here: the signed tenant claim still keeps acme out
    globex_keys = Keyring.of(eve.identity, bob.identity)
    async with EmbeddedServer() as server:
        url = server.url
        async with (
            connect(url, tenant="acme", root="acme", keyring=acme_keys, policy=POLICY) as acme,
            connect(url, tenant="globex", root="globex", keyring=globex_keys) as globex,
            alice.serve(acme), bob.serve(acme), carol.serve(acme), eve.serve(globex),
        ):  # fmt: skip
            console.print("[bold]1. bob seals an event to alice[/bold]")
            ack = await bob.publish(KnowledgeShared(topic="plans", content="Q3"), seal_to=["alice"])
            await _settle(seen)
            console.print("[bold]2. bob publishes where the policy denies it[/bold]")
            try:
                await bob.publish(KnowledgeShared(topic="secret.keys", content="hunter2"))
            except Forbidden as exc:
                console.print(f"  [red]Forbidden[/red]: {exc.reason}")
            console.print("[bold]3. eve (tenant globex) replays acme's event into globex[/bold]")
            await _cross_tenant_replay(url, acme, ack.seq)
            await asyncio.sleep(0.5)
            await _show_audit(console, acme, globex)


async def _settle(seen: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await seen.wait()
    await asyncio.sleep(0.3)


async def _cross_tenant_replay(url: str, acme: Bus, seq: int) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stolen = await js.get_msg(acme.stream, seq)
        signature = {SIGNATURE_HEADER: (stolen.headers or {})[SIGNATURE_HEADER]}
        await js.publish("globex.knowledge.plans", stolen.data or b"", headers=signature)
    finally:
        await nc.close()


async def _show_audit(console: Console, *buses: Bus) -> None:
    table = Table(title="audit log (hash-chained, append-only)")
    for column in ("tenant", "seq", "action", "subject", "reason"):
        table.add_column(column)
    for bus in buses:
        async for record in bus.audit.tail():
            table.add_row(bus.tenant, str(record.seq), record.action, record.subject, record.reason)
        report = await bus.audit.verify()
        console.print(f"  {bus.tenant}: audit chain intact, {report.records} records")
    console.print(table)
