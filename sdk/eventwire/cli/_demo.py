"""``eventwire demo``: agents on an embedded server, a verified timeline, forgeries refused."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import nats
import typer
from rich.console import Console
from rich.table import Table

from eventwire import (
    SIGNATURE_HEADER,
    Agent,
    Event,
    HelpRequested,
    Identity,
    Keyring,
    KnowledgeShared,
    TaskCompleted,
    connect,
)
from eventwire_security import sign_event

if TYPE_CHECKING:
    from eventwire import Bus, Rejection

TENANT = "demo"
_EXPECTED_EVENTS = 6  # 3 agents started, knowledge, help, task completed
_EXPECTED_REFUSALS = 2


class Timeline:
    """Prints each verified event and each refusal as it happens."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = time.perf_counter()
        self.events = 0
        self.refusals = 0
        self.changed = asyncio.Event()

    def _stamp(self) -> str:
        return f"[dim]{time.perf_counter() - self.start:6.3f}s[/dim]"

    async def on_event(self, event: Event) -> None:
        self.events += 1
        self.row(event, "via stream")

    def row(self, event: Event, how: str) -> None:
        self.console.print(
            f"{self._stamp()} [green]✔[/green] [bold]{event.agent:<11}[/bold] "
            f"{event.subject:<28} [dim]kid {event.signer_kid[:8]}… {how}[/dim]"
        )
        self.changed.set()

    def on_reject(self, rejection: Rejection) -> None:
        self.refusals += 1
        self.console.print(
            f"{self._stamp()} [red]✘ REFUSED[/red]   {rejection.wire_subject:<28} "
            f"[red]{rejection.reason}[/red]"
        )
        self.changed.set()

    async def wait_for(self, events: int, refusals: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.events < events or self.refusals < refusals:
                self.changed.clear()
                await self.changed.wait()


def _agents() -> tuple[Agent, Agent, Agent]:
    researcher = Agent("researcher", tenant=TENANT, capabilities=["research"])
    summarizer = Agent("summarizer", tenant=TENANT, capabilities=["summarize"])
    coordinator = Agent("coordinator", tenant=TENANT)

    @summarizer.on("capability.summarize.help")
    async def summarize(event: Event) -> None:
        request = event.parse(HelpRequested)
        summary = f"{len(request.question.split())} words summarized"
        await summarizer.publish(
            TaskCompleted(task_type="summarize", task_id=event.id, result=summary)
        )

    @summarizer.on_request
    async def answer(event: Event) -> TaskCompleted:
        return TaskCompleted(task_type="summarize", task_id=event.id, result="direct answer")

    return researcher, summarizer, coordinator


async def _forge(bus: Bus, stream_subject: str, real_seq: int) -> None:
    """An attacker on the same server: a key nobody trusts, and a tampered real event."""
    rogue = Identity.generate(TENANT, "researcher")
    claims = {
        "specversion": "1.0", "id": "forged-1", "source": rogue.principal.source,
        "type": "io.eventwire.knowledge.shared", "subject": "knowledge.ml",
        "time": "2026-01-01T00:00:00Z", "datacontenttype": "application/json",
        "data": {"topic": "ml", "content": "wire the money"}, "tenant": TENANT,
        "root": bus.root, "iat": 0, "correlationid": "forged-1",
    }  # fmt: skip
    forged = sign_event(claims, rogue)
    nc = await nats.connect(bus.url)
    try:
        js = nc.jetstream()
        headers = {SIGNATURE_HEADER: forged.signature}
        await js.publish(stream_subject, forged.body, headers=headers)
        real = await js.get_msg(bus.stream, real_seq)
        tampered = bytearray(real.data or b"")
        tampered[len(tampered) // 2] ^= 0x01
        signature = (real.headers or {})[SIGNATURE_HEADER]
        await js.publish(stream_subject, bytes(tampered), headers={SIGNATURE_HEADER: signature})
    finally:
        await nc.close()


async def run_demo(console: Console) -> Timeline:
    researcher, summarizer, coordinator = _agents()
    keyring = Keyring.of(researcher.identity, summarizer.identity, coordinator.identity)
    timeline = Timeline(console)
    async with connect(tenant=TENANT, keyring=keyring, on_reject=timeline.on_reject) as bus:
        console.print(f"[bold]embedded nats-server[/bold] at {bus.url}, stream {bus.stream}\n")
        async with bus.subscribe(">", timeline.on_event, durable="timeline"):
            async with researcher.serve(bus), summarizer.serve(bus), coordinator.serve(bus):
                knowledge_seq = await _converse(researcher, coordinator, timeline)
                await _forge(bus, f"{bus.root}.knowledge.ml", knowledge_seq)
                await timeline.wait_for(_EXPECTED_EVENTS, _EXPECTED_REFUSALS, timeout=10)
                agents = [info.name for info in await bus.agents()]
            # the three agents announce that they stopped
            await timeline.wait_for(_EXPECTED_EVENTS + 3, _EXPECTED_REFUSALS, timeout=10)
        _summary(console, bus, agents)
    return timeline


async def _converse(researcher: Agent, coordinator: Agent, timeline: Timeline) -> int:
    """Share knowledge, ask for help by capability and directly; return the knowledge seq."""
    ack = await researcher.publish(KnowledgeShared(topic="ml", content="attention is cheap"))
    await coordinator.publish(
        HelpRequested(capability="summarize", question="summarize the ml notes")
    )
    reply = await coordinator.request(
        "summarizer", HelpRequested(capability="summarize", question="quick one"), timeout=5
    )
    timeline.row(reply, "direct reply")
    return ack.seq


def _summary(console: Console, bus: Bus, agents: list[str]) -> None:
    table = Table(
        title="security summary",
        caption="verified: signatures checked by every subscriber, registry entry and reply "
        "(one event read by three agents counts three times)",
    )
    table.add_column("verified", justify="right")
    table.add_column("refused", justify="right")
    table.add_column("refused by reason")
    table.add_column("registered agents")
    stats = bus.security
    table.add_row(
        str(stats.verified),
        str(sum(stats.rejected.values())),
        ", ".join(f"{reason}: {n}" for reason, n in sorted(stats.rejected.items())),
        ", ".join(agents),
    )
    console.print()
    console.print(table)


def demo(
    secure: Annotated[
        bool, typer.Option(help="Two tenants, sealing, a policy and the audit log.")
    ] = False,
) -> None:
    console = Console(highlight=False)
    if secure:
        from ._demo_secure import run_secure_demo

        asyncio.run(run_secure_demo(console))
        return
    try:
        timeline = asyncio.run(run_demo(console))
    except TimeoutError:
        console.print("[red]demo did not complete in time[/red]")
        raise SystemExit(1) from None
    console.print(
        f"\n[bold green]demo complete[/bold green]: {timeline.events} events on the timeline, "
        f"{timeline.refusals} forgeries refused before any handler"
    )
