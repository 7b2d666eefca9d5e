"""eventwire's pytest plugin: an embedded server, a bus per test, identities and an agent
harness, on a real nats-server (acks, redelivery and dead letters are JetStream's own).

Installed with ``pip install 'eventwire[testing]'`` (pytest, pytest-asyncio) and registered
through the ``pytest11`` entry point ``eventwire``: the fixtures are there in every test
(``-p no:eventwire`` turns them off). ``import eventwire`` never imports this package.

Fixtures: ``eventwire_server`` (session), ``eventwire_tenant``, ``eventwire_root``,
``eventwire_keyring``, ``eventwire_identity``, ``eventwire_refused``, ``eventwire_bus``,
``eventwire_harness``. See :class:`Harness`::

    async def test_summarizer_answers(eventwire_harness):
        agent = eventwire_harness.agent("summarizer", capabilities=["summarize"])

        @agent.on("capability.summarize.help")
        async def answer(event):
            await agent.publish(TaskCompleted(task_type="summarize", task_id=event.id))

        async with eventwire_harness.run(agent):
            await eventwire_harness.publish(HelpRequested(capability="summarize", question="?"))
            [done] = await eventwire_harness.received("task.summarize.completed")
        assert done.source == "default/summarizer"
"""

from __future__ import annotations

from ._harness import Harness, Identities, NotReceived

try:
    from ._fixtures import (
        eventwire_bus,
        eventwire_harness,
        eventwire_identity,
        eventwire_keyring,
        eventwire_refused,
        eventwire_root,
        eventwire_server,
        eventwire_tenant,
    )
except ImportError as exc:  # pytest without pytest-asyncio: say what to install, break nothing
    if exc.name != "pytest_asyncio":
        raise
    from ._missing import (  # stand-ins of the same names
        eventwire_bus,
        eventwire_harness,
        eventwire_identity,
        eventwire_keyring,
        eventwire_refused,
        eventwire_root,
        eventwire_server,
        eventwire_tenant,
    )

__all__ = [
    "Harness",
    "Identities",
    "NotReceived",
    "eventwire_bus",
    "eventwire_harness",
    "eventwire_identity",
    "eventwire_keyring",
    "eventwire_refused",
    "eventwire_root",
    "eventwire_server",
    "eventwire_tenant",
]
