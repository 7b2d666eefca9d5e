"""3,000 one-of-N requests among 3 agent processes, one of them killed with SIGKILL mid-run:
every request's effect happens exactly once, each agent took a share, the killed agent's
unfinished work is taken over by the others, and its failure is reported once.

Each agent is ``tests/sdk/_work_agent.py`` in its own process; its handler records every
run and (at most once per event id, across processes) its effect in files, so the killed
process's work is counted too. Runs and effects are counted apart: an event whose handler
ran on the killed agent but was never acknowledged is redelivered and runs again (a
re-run); the handler's own idempotence keeps its effect single.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import eventwire
from eventwire import Agent, AgentFailed, Event, HelpRequested, Identity, Keyring, PublishAck
from eventwire_security import consumer_name
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer

ROOT_DIR = Path(__file__).resolve().parents[2]
NAMES = ("summarizer-a", "summarizer-b", "summarizer-c")
VICTIM = "summarizer-c"
REQUESTS = 3000
REGISTRY_TTL = 1.0  # no minimum in the SDK; heartbeats every 0.33 s, a silence is seen in ~1 s
HANDLER_DELAY = 0.005  # each request is in flight this long
QUESTION = HelpRequested(capability="summarize", question="tl;dr?")


@dataclass(frozen=True, slots=True)
class Mark:
    """One record line: when, which agent, which event."""

    at: float
    agent: str
    event_id: str

    @classmethod
    def parse(cls, line: str) -> Mark:
        at, agent, event_id = line.split(" ", 2)
        return cls(float(at), agent, event_id)


def runs(out: Path) -> list[Mark]:
    found = []
    for path in (out / "runs").glob("*"):
        found += [Mark.parse(line) for line in path.read_text().splitlines()]
    return found


def held(out: Path, agent: str) -> list[Mark]:
    """The events ``agent`` recorded the effect of and then held unacknowledged."""
    path = out / "held" / agent
    return [Mark.parse(line) for line in path.read_text().splitlines()] if path.exists() else []


def effects(out: Path) -> list[Mark]:
    folder = out / "effects"
    return [Mark.parse(p.read_text().strip()) for p in folder.glob("[!.]*")]


def effect_count(out: Path) -> int:
    return sum(1 for _ in (out / "effects").glob("[!.]*"))


class AgentProcess:
    """One ``_work_agent`` process; ``instance`` is known once it serves."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name, self.config, self.log = name, config, log
        self.proc: asyncio.subprocess.Process | None = None
        self.instance = ""

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.sdk._work_agent", str(self.config),
                cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
                stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await self.proc.stdout.readline()).decode().split()
        assert line[:1] == ["serving"], f"{self.name} did not start: {self.log.read_text()}"
        self.instance = line[1]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM (a clean stop: the agent withdraws), SIGKILL after 10 s."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


def write_configs(
    server: EmbeddedServer, root: str, out: Path, identities: dict[str, Identity]
) -> dict[str, Path]:
    trusted = {n: i.public_key.raw.hex() for n, i in identities.items()}
    paths = {}
    for name in NAMES:
        config = {
            "url": server.url, "root": root, "tenant": TENANT, "agent": name,
            "seed": identities[name].seed.hex(), "trusted": trusted, "out": str(out),
            "registry_ttl": REGISTRY_TTL, "delay": HANDLER_DELAY,
            "hold_after": REQUESTS // 9 if name == VICTIM else 0,
        }  # fmt: skip
        paths[name] = out.parent / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    return paths


async def publish_all(bus: eventwire.Bus, asker: Identity) -> list[PublishAck]:
    """The requests, one-of-N, pipelined 100 at a time."""

    async def one() -> PublishAck:
        return await bus.publish(QUESTION, identity=asker, deliver="one")

    acks: list[PublishAck] = []
    for _ in range(REQUESTS // 100):
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one()) for _ in range(100)]
        acks += [task.result() for task in tasks]
    return acks


async def kill_at_a_third(victim: AgentProcess, out: Path) -> float:
    """SIGKILL ``victim`` once it ran a third of its share and holds an event whose effect
    it recorded (see ``hold_after``); when it was killed."""
    await wait_until(lambda: bool(held(out, victim.name)), timeout=40)
    victim.kill()
    killed = time.time()
    assert victim.proc is not None
    await victim.proc.wait()
    return killed


async def test_a_killed_agents_work_is_taken_over_exactly_once(
    nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    keyring = Keyring()
    identities = {name: make_identity(name, keyring) for name in (*NAMES, "asker")}
    out = tmp_path / "record"
    (out / "effects").mkdir(parents=True)
    configs = write_configs(nats_server, root, out, identities)
    agents = {n: AgentProcess(n, configs[n], tmp_path / f"{n}.log") for n in NAMES}
    failed: list[tuple[float, AgentFailed]] = []

    async def lifecycle(event: Event) -> None:
        if event.subject == "agent.lifecycle.failed":
            failed.append((time.time(), event.parse(AgentFailed)))

    async with (
        asyncio.timeout(60),
        eventwire.connect(
            nats_server.url, tenant=TENANT, keyring=keyring, root=root, registry_ttl=REGISTRY_TTL
        ) as bus,
        bus.subscribe("agent.lifecycle.>", lifecycle, durable="kill-test"),
    ):
        try:
            async with asyncio.TaskGroup() as group:
                for each in agents.values():
                    group.create_task(each.start())
            while len(await bus.agents(capability="summarize")) < len(NAMES):  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # polls the registry
            async with asyncio.TaskGroup() as group:
                publishing = group.create_task(publish_all(bus, identities["asker"]))
                killing = group.create_task(kill_at_a_third(agents[VICTIM], out))
            acks, killed = publishing.result(), killing.result()
            await wait_until(lambda: effect_count(out) >= REQUESTS and bool(failed), timeout=40)
            await asyncio.sleep(1.0)  # time for a second report, a late re-run or effect
            status = await bus.work_status("summarize")
        finally:
            for each in agents.values():
                await each.stop()
    victim = agents[VICTIM]
    ids = {ack.event_id for ack in acks}
    check(Outcome(ids, effects(out), runs(out), held(out, VICTIM), victim, failed, killed))
    assert (status.pending, status.in_progress) == (0, 0)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the agents recorded, and when the victim was killed and reported failed."""

    ids: set[str]
    done: list[Mark]  # effects
    ran: list[Mark]  # runs
    held: list[Mark]  # effects the victim recorded and held unacknowledged until killed
    victim: AgentProcess
    failed: list[tuple[float, AgentFailed]]  # when seen here, what
    killed: float

    @property
    def reruns(self) -> set[str]:
        counts = Counter(mark.event_id for mark in self.ran)
        return {event_id for event_id, n in counts.items() if n > 1}

    def by(self, marks: list[Mark], agent: str) -> set[str]:
        return {mark.event_id for mark in marks if mark.agent == agent}

    def reports(self) -> list[AgentFailed]:
        return [r for _, r in self.failed if r.instance == self.victim.instance]


def check(outcome: Outcome) -> None:
    victim = outcome.victim.name
    by_id = Counter(mark.event_id for mark in outcome.done)
    assert len(outcome.ids) == REQUESTS
    assert set(by_id) == outcome.ids  # nothing lost, nothing else
    assert max(by_id.values()) == 1  # each effect once
    assert {mark.agent for mark in outcome.done} == set(NAMES)  # each agent handled a share
    runs_by_id = Counter(mark.event_id for mark in outcome.ran)
    reruns, started = outcome.reruns, outcome.by(outcome.ran, victim)
    assert reruns <= started  # only the killed agent's unacknowledged work ran again
    assert all(runs_by_id[event_id] == 2 for event_id in reruns)
    unfinished = started - outcome.by(outcome.done, victim)
    assert unfinished <= reruns  # started, killed before its effect: run again elsewhere
    # the idempotent path: effect recorded, killed before the ack, run again, no new effect
    holds = {mark.event_id for mark in outcome.held}
    assert len(holds) == 1
    assert holds <= outcome.by(outcome.done, victim) & reruns
    report(outcome)
    reports = outcome.reports()
    assert [(r.agent, r.instance) for r in reports] == [(victim, outcome.victim.instance)]


def report(outcome: Outcome) -> None:
    """The numbers (shown with ``pytest -s``): shares, re-runs, and how long after the kill
    the killed agent's events ran elsewhere and its failure event arrived."""
    victim, killed, ran = outcome.victim, outcome.killed, outcome.ran
    shares = Counter(mark.agent for mark in outcome.done)
    reruns = outcome.reruns
    unfinished = outcome.by(ran, victim.name) - outcome.by(outcome.done, victim.name)
    taken = sorted(m.at - killed for m in ran if m.event_id in reruns and m.agent != victim.name)
    seen = [at - killed for at, r in outcome.failed if r.instance == victim.instance]
    others = [(r.agent, r.instance) for _, r in outcome.failed if r.instance != victim.instance]
    first = min(m.at for m in ran)
    rate = sum(1 for m in ran if m.at <= killed) / max(killed - first, 1e-6)
    print(
        f"\nshares {dict(sorted(shares.items()))}; {rate:.0f} runs/s before the kill; "
        f"{len(ran)} runs, {len(reruns)} re-runs "
        f"({len(unfinished)} unfinished by the killed agent, {len(outcome.held)} effect "
        f"recorded before the kill); killed {killed - first:.2f}s after the "
        f"first run; re-runs {taken[0] if taken else 0:.2f}..{taken[-1] if taken else 0:.2f}s "
        f"after the kill; failed event seen {min(seen, default=-1):.2f}s after the kill; last "
        f"run {max(m.at for m in ran) - killed:.2f}s after the kill; other failed reports: {others}"
    )


async def test_work_pulled_ahead_is_kept_while_it_waits_for_a_slow_handler(
    bus: eventwire.Bus,
) -> None:
    """An agent pulls work ahead of its one handler slot; slow handlers make the last pulled
    event wait longer than the work's ack wait: in-progress acks keep it (no redelivery to
    the other agent, no second run), where it used to be handled by both."""
    runs: Counter[str] = Counter()
    agents = [
        Agent(name, capabilities=["summarize"], identity=make_identity(name, bus.keyring))
        for name in ("slow-a", "slow-b")
    ]
    for each in agents:

        @each.on("capability.summarize.help")
        async def summarize(event: Event) -> None:
            runs[event.id] += 1
            await asyncio.sleep(0.5)  # 16 pulled ahead: the last waits 7.5 s > 5 s

    asker = make_identity("asker", bus.keyring)
    async with agents[0].serve(bus), agents[1].serve(bus):
        acks = [await bus.publish(QUESTION, identity=asker, deliver="one") for _ in range(32)]
        await wait_until(lambda: len(runs) == len(acks), timeout=30)
        await asyncio.sleep(0.5)  # a second run would start now
        work = consumer_name("work", "capability.summarize.work.*")
        info = await bus.jetstream.consumer_info(bus.stream, work)
    assert set(runs) == {ack.event_id for ack in acks}
    assert max(runs.values()) == 1
    assert info.num_redelivered == 0
