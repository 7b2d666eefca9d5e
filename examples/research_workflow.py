"""A research workflow across three agents (``python examples/research_workflow.py``).

research -> summarize -> (a durable 2 s timer: let the sources settle) -> the editor's
signal -> review. Each step is a signed direct request to its agent, answered once per
workflow step (a resumed workflow gets the recorded answer); the timer is a JetStream
message schedule, so it would survive a restart of the orchestrator or of the server.
Exits 0 when the workflow completed with the editor's note in the review.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import eventwire
from eventwire import (
    Agent,
    Identity,
    Keyring,
    Orchestrator,
    StepWorker,
    WorkflowContext,
    Workflows,
    workflow,
)

TENANT = "lab"


class Topic(BaseModel):
    topic: str


class Text(BaseModel):
    text: str


class Review(BaseModel):
    verdict: str
    note: str


@workflow("research", input=Topic, output=Review)
async def research(ctx: WorkflowContext, topic: Topic) -> Review:
    notes = await ctx.step("researcher", "research", topic, output=Text, timeout=10)
    summary = await ctx.step("summarizer", "summarize", notes, output=Text)
    await ctx.sleep(2)  # durable: a JetStream message schedule, not an in-process sleep
    note = await ctx.wait_signal("editor-note", timeout=60)
    request = Text(text=f"{summary.text} | editor: {note}")
    return await ctx.step("reviewer", "review", request, output=Review)


def agents(bus: eventwire.Bus, ids: dict[str, Identity]) -> list[Agent]:
    researcher, summarizer, reviewer = StepWorker(bus), StepWorker(bus), StepWorker(bus)

    @researcher.action("research", input=Topic)
    async def find(topic: Topic) -> Text:
        return Text(text=f"three papers on {topic.topic}; two agree, one does not")

    @summarizer.action("summarize", input=Text)
    async def summarize(notes: Text) -> Text:
        return Text(text=notes.text.split(";")[0])

    @reviewer.action("review", input=Text)
    async def review(text: Text) -> Review:
        return Review(verdict="accept", note=text.text)

    made = []
    for name, steps in (
        ("researcher", researcher),
        ("summarizer", summarizer),
        ("reviewer", reviewer),
    ):
        agent = Agent(name, identity=ids[name])
        agent.on_request(steps.handle)
        made.append(agent)
    return made


async def main() -> int:
    names = ("orchestrator", "editor", "researcher", "summarizer", "reviewer")
    ids = {name: Identity.generate(TENANT, name) for name in names}
    async with eventwire.connect(tenant=TENANT, keyring=Keyring.of(*ids.values())) as bus:
        one, two, three = agents(bus, ids)
        async with (
            one.serve(bus), two.serve(bus), three.serve(bus),
            Orchestrator(bus, ids["orchestrator"], [research]),
        ):  # fmt: skip
            editor = Workflows(bus, ids["editor"], orchestrators=["lab/orchestrator"])
            handle = await editor.start(research, "r-1", Topic(topic="sparse attention"))
            while "timer-set" not in [e.kind for e in await _timeline(editor)]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            print("summary done, the workflow sleeps; the editor sends a note")
            await editor.signal("r-1", "editor-note", "cite the dissenting paper")
            review = await handle.result(timeout=30)
            timeline = await editor.timeline("r-1")
    print("review:", review.verdict, "-", review.note)
    print(" -> ".join(entry.kind for entry in timeline))
    return 0 if review.verdict == "accept" and "dissenting" in review.note else 1


async def _timeline(control: Workflows) -> list[eventwire.TimelineEntry]:
    try:
        return await control.timeline("r-1")
    except eventwire.WorkflowNotFound:
        return []


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
