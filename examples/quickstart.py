"""Two agents on an embedded server: one asks for help, the other answers; signed both ways.

Run it with ``python examples/quickstart.py``: it starts a local nats-server, lets the
``researcher`` ask the ``summarizer`` for a summary, prints the verified answer, and exits 0.
"""

from __future__ import annotations

import asyncio

import eventwire
from eventwire import Agent, Event, HelpRequested, Identity, Keyring, TaskCompleted

TENANT = "acme"


async def main() -> None:
    summarizer_key = Identity.generate(TENANT, "summarizer")
    researcher_key = Identity.generate(TENANT, "researcher")
    summarizer = Agent("summarizer", capabilities=["summarize"], identity=summarizer_key)
    researcher = Agent("researcher", identity=researcher_key)
    answered: asyncio.Future[TaskCompleted] = asyncio.get_running_loop().create_future()

    @summarizer.on("capability.summarize.help")
    async def summarize(event: Event) -> None:
        question = event.parse(HelpRequested).question
        summary = f"{len(question.split())} words, about {question.split()[-1]}"
        await summarizer.publish(
            TaskCompleted(task_type="summarize", task_id=event.id, result=summary)
        )

    @researcher.on("task.summarize.completed")
    async def done(event: Event) -> None:
        if not answered.done():
            answered.set_result(event.parse(TaskCompleted))

    keyring = Keyring.of(summarizer_key, researcher_key)
    async with (
        eventwire.connect(tenant=TENANT, keyring=keyring) as bus,  # an embedded server
        summarizer.serve(bus),
        researcher.serve(bus),
    ):
        await researcher.publish(
            HelpRequested(capability="summarize", question="please summarize the JetStream docs")
        )
        result = await asyncio.wait_for(answered, timeout=30)
        print(f"summarizer answered: {result.result!r} (task {result.task_id})")


if __name__ == "__main__":
    asyncio.run(main())
