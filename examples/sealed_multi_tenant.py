"""Two tenants, a policy and a sealed event (``python examples/sealed_multi_tenant.py``).

Tenants ``acme`` and ``globex`` share one embedded nats-server, each under its own subject
root and keyring. acme's bus enforces a policy (deny by default): its agents may share
``knowledge.>`` but nobody may publish under ``knowledge.secret.>``. ``bob`` seals an
event to ``alice``: alice's handler reads the plaintext; ``carol``, in the same tenant and
on the same subject, gets the event but not its data (``event.readable`` is false and
``parse`` raises ``SealedForOthers``). bob's publish under ``knowledge.secret`` is
``Forbidden`` before anything is signed. Then the stored, signed event is copied into
globex's stream: globex's bus refuses it (``wrong-tenant``) although globex even trusts
bob's key, and its reader never sees it. Exits 0.

(A production deployment also makes each tenant a NATS account and each agent a NATS user
with permissions compiled from the policy: ``eventwire tenant ...``, see the README.)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats

from eventwire import (
    SIGNATURE_HEADER,
    Agent,
    EmbeddedServer,
    Event,
    Forbidden,
    Keyring,
    KnowledgeShared,
    Policy,
    Rejection,
    SealedForOthers,
    connect,
)

if TYPE_CHECKING:
    from collections.abc import Callable

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


def reader(agent: Agent, seen: dict[str, str]) -> None:
    @agent.on("knowledge.>")
    async def read(event: Event) -> None:
        try:
            seen[agent.name] = event.parse(KnowledgeShared).content
        except SealedForOthers:
            seen[agent.name] = "<sealed for others>"
        print(f"  {agent.tenant}/{agent.name} gets {event.subject}: {seen[agent.name]!r}")


async def until(condition: Callable[[], object]) -> None:
    """Wait until ``condition()`` holds (it watches state no event announces)."""
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def main() -> None:
    alice, bob, carol = (Agent(name, tenant="acme") for name in ("alice", "bob", "carol"))
    eve = Agent("eve", tenant="globex")
    seen: dict[str, str] = {}
    for agent in (alice, carol, eve):
        reader(agent, seen)
    refused: list[Rejection] = []
    acme_keys = Keyring.of(alice.identity, bob.identity, carol.identity)
    globex_keys = Keyring.of(eve.identity, bob.identity)  # trusting bob does not let acme in
    async with EmbeddedServer() as server:
        url = server.url
        async with (
            connect(url, tenant="acme", root="acme", keyring=acme_keys, policy=POLICY) as acme,
            connect(url, tenant="globex", root="globex", keyring=globex_keys,
                    on_reject=refused.append) as globex,
            alice.serve(acme), bob.serve(acme), carol.serve(acme), eve.serve(globex),
        ):  # fmt: skip
            print("bob seals a KnowledgeShared to alice")
            ack = await bob.publish(KnowledgeShared(topic="plans", content="Q3"), seal_to=["alice"])
            await until(lambda: {"alice", "carol"} <= seen.keys())
            assert seen == {"alice": "Q3", "carol": "<sealed for others>"}

            print("bob publishes under knowledge.secret, which the policy denies")
            try:
                await bob.publish(KnowledgeShared(topic="secret.keys", content="hunter2"))
            except Forbidden as exc:
                print(f"  Forbidden: {exc}")

            print("the signed event is copied into globex's stream")
            nc = await nats.connect(url)
            try:
                stored = await nc.jetstream().get_msg(acme.stream, ack.seq)
                headers = {SIGNATURE_HEADER: (stored.headers or {})[SIGNATURE_HEADER]}
                await nc.jetstream().publish(
                    "globex.knowledge.plans", stored.data or b"", headers=headers
                )
            finally:
                await nc.close()
            await until(lambda: refused)
            print(f"  globex refuses it: {refused[0].reason} ({refused[0].detail})")
            assert refused[0].reason == "wrong-tenant"
            assert "eve" not in seen


if __name__ == "__main__":
    asyncio.run(main())
