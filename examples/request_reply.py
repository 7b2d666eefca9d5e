"""Direct request-reply between agents, signed both ways (``python examples/request_reply.py``).

A ``translator`` agent answers direct requests (``@agent.on_request``: its return value is
the signed reply). A ``writer`` asks it by name, then asks whoever serves the capability
``translate`` (the least-loaded live agent from the signed registry). The reply is accepted
only if the agent asked signed it and it names the request as its cause. A handler that
raises answers with a signed ``RemoteError(code="handler-failed")``; asking an agent that
is not there is ``NoResponders``. Runs on an embedded nats-server and exits 0.
"""

from __future__ import annotations

import asyncio

import eventwire
from eventwire import (
    Agent,
    Event,
    HelpRequested,
    Identity,
    Keyring,
    NoResponders,
    RemoteError,
    TaskCompleted,
)

TENANT = "acme"
WORDS = {"hello": "bonjour", "world": "monde"}


async def main() -> None:
    translator_key = Identity.generate(TENANT, "translator")
    writer_key = Identity.generate(TENANT, "writer")
    translator = Agent("translator", capabilities=["translate"], identity=translator_key)
    writer = Agent("writer", identity=writer_key)

    @translator.on_request
    async def translate(event: Event) -> TaskCompleted:
        question = event.parse(HelpRequested).question
        if not question:
            raise ValueError("nothing to translate")
        words = [WORDS.get(word, word) for word in question.split()]
        return TaskCompleted(task_type="translate", task_id=event.id, result=" ".join(words))

    keyring = Keyring.of(translator_key, writer_key)
    async with (
        eventwire.connect(tenant=TENANT, keyring=keyring) as bus,  # an embedded server
        translator.serve(bus),
        writer.serve(bus),
    ):
        ask = HelpRequested(capability="translate", question="hello world")
        reply = await writer.request("translator", ask, timeout=5)
        answer = reply.parse(TaskCompleted)
        print(f"by name: {answer.result!r}, signed by {reply.source} (kid {reply.signer_kid[:8]})")
        assert reply.source == f"{TENANT}/translator"
        assert answer.result == "bonjour monde"

        reply = await writer.request(ask, capability="translate", timeout=5)
        print(f"by capability: {reply.parse(TaskCompleted).result!r} from {reply.agent}")

        code = None
        try:
            await writer.request("translator", HelpRequested(capability="translate", question=""))
        except RemoteError as exc:
            code = exc.code
        print(f"a failing handler answers a signed error: RemoteError, code={code!r}")
        assert code == "handler-failed"

        try:
            await writer.request("nobody", ask, timeout=2)
        except NoResponders:
            print("nobody serves 'nobody': NoResponders")


if __name__ == "__main__":
    asyncio.run(main())
