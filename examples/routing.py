"""Routing and resilience, end to end on the embedded server (``python examples/routing.py``).

Three agents share the capability ``summarize``: two in this process, one in a child
process. A direct request by capability goes to the least-loaded of them; a CEL rule on a
router agent sends big orders to the capability's one-of-N work; 30 one-of-N requests are
shared among the three. Then the child process is killed with SIGKILL while it holds work:
the others' failure detectors report it once as ``agent.lifecycle.failed`` and its
unacknowledged work is redelivered to them, so every request is handled exactly once.
Exits 0 when all of that happened.

(The demo hands the child its key on stdin; a real deployment gives each process its own
key file and the signed keyring, see the README.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from typing import TYPE_CHECKING

import eventwire
from eventwire import (
    Agent,
    AgentFailed,
    CustomEvent,
    EmbeddedServer,
    Event,
    HelpRequested,
    Identity,
    Keyring,
    Principal,
    TaskCompleted,
)

if TYPE_CHECKING:
    from collections.abc import Callable

TENANT, ROOT, TTL = "demo", "routing", 3.0
NAMES = ("summarizer-a", "summarizer-b", "summarizer-c", "router", "asker")
REQUESTS = 30


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (it watches state no event announces)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def keyring_of(identities: dict[str, Identity]) -> Keyring:
    keyring = Keyring()
    for identity in identities.values():
        keyring.add(identity.trusted())
    return keyring


def summarizer(identity: Identity, handled: Counter[str], delay: float) -> Agent:
    agent = Agent(identity.principal.agent, capabilities=["summarize"], identity=identity)

    @agent.on("capability.summarize.help")
    async def summarize(event: Event) -> None:
        await asyncio.sleep(delay)
        handled[event.id] += 1

    @agent.on_request
    async def answer(event: Event) -> TaskCompleted:
        return TaskCompleted(task_type="summarize", task_id=event.id, result=agent.name)

    return agent


async def child(url: str) -> None:
    """summarizer-c, in its own process: it takes work and holds it (a slow handler)."""
    seeds = json.loads(sys.stdin.readline())
    identities = {n: Identity(Principal(TENANT, n), bytes.fromhex(s)) for n, s in seeds.items()}
    async with eventwire.connect(
        url, tenant=TENANT, root=ROOT, keyring=keyring_of(identities), registry_ttl=TTL
    ) as bus:
        agent = summarizer(identities["summarizer-c"], Counter(), delay=3600)
        agent.watch_failures = False
        async with agent.serve(bus):
            print("serving", flush=True)
            await until(lambda: agent.load.in_flight > 0)
            print("holding work", flush=True)
            await asyncio.Event().wait()  # until killed


async def main() -> None:
    identities = {name: Identity.generate(TENANT, name) for name in NAMES}
    handled: Counter[str] = Counter()
    failures: list[AgentFailed] = []
    async with EmbeddedServer() as server, eventwire.connect(
        server.url, tenant=TENANT, root=ROOT, keyring=keyring_of(identities), registry_ttl=TTL
    ) as bus:  # fmt: skip
        a = summarizer(identities["summarizer-a"], handled, delay=0.05)
        b = summarizer(identities["summarizer-b"], handled, delay=0.05)
        router = Agent("router", identity=identities["router"])
        router.route(
            "custom.order.*",
            when="data.amount > 1000",
            to="capability.summarize.help",
            deliver="one",
        )

        @a.on("agent.lifecycle.failed")
        async def failed(event: Event) -> None:
            failures.append(event.parse(AgentFailed))

        process = await start_child(server.url, identities)
        try:
            async with a.serve(bus), b.serve(bus), router.serve(bus):
                await demo(bus, identities["asker"], process, handled, failures)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def start_child(url: str, identities: dict[str, Identity]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    seeds = {name: identity.seed.hex() for name, identity in identities.items()}
    process.stdin.write(json.dumps(seeds).encode() + b"\n")
    await process.stdin.drain()
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line.strip() == b"serving", line
    return process


async def demo(
    bus: eventwire.Bus,
    asker: Identity,
    process: asyncio.subprocess.Process,
    handled: Counter[str],
    failures: list[AgentFailed],
) -> None:
    question = HelpRequested(capability="summarize", question="tl;dr?")
    while len({i.name for i in await bus.agents(capability="summarize")}) < 3:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # polls the registry
    reply = await bus.request(question, identity=asker, capability="summarize")
    print(f"request by capability answered by {reply.parse(TaskCompleted).result}")

    order = CustomEvent("custom.order.placed", "order", {"amount": 5000})
    await bus.publish(order, identity=asker)  # the router's CEL rule sends it to the work
    acks = [await bus.publish(question, identity=asker, deliver="one") for _ in range(REQUESTS)]
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line.strip() == b"holding work", line
    process.send_signal(signal.SIGKILL)
    print("summarizer-c killed with SIGKILL while holding work")
    async with asyncio.timeout(60):
        await until(lambda: bool(failures) and len(handled) == REQUESTS + 1)
    report = failures[0]
    print(
        f"agent.lifecycle.failed: {report.agent} instance {report.instance} (phi {report.phi:.0f})"
    )
    assert all(handled[ack.event_id] == 1 for ack in acks), "a request was lost or repeated"
    assert all(count == 1 for count in handled.values()), "a request was handled twice"
    print(f"{len(handled)} requests (one routed by the CEL rule), each handled exactly once")
    await asyncio.sleep(1.0)
    assert len(failures) == 1, failures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(child(sys.argv[2]))
    else:
        asyncio.run(main())
