"""An application for ``eventwire run`` in the runner tests (``tests/sdk/test_runner.py``):
``eventwire run tests.sdk._runner_app:agent`` from the repository's root.

``worker`` (tenant ``acme``) fails on ``task.boom.completed`` (dead-lettered at once) and
hangs on ``task.slow.completed`` (after logging that it started) until it is cancelled, and
takes a second on ``task.nap.completed``.
"""

from __future__ import annotations

import asyncio
import logging

from eventwire import Agent, Event

FAILURE = "the handler failure the runner logs"
log = logging.getLogger("tests.runner_app")

agent = Agent("worker", capabilities=["work"], tenant="acme")


@agent.on("task.boom.completed", terminal=(RuntimeError,))
async def boom(event: Event) -> None:
    raise RuntimeError(f"{FAILURE} ({event.id})")


@agent.on("task.slow.completed")
async def slow(event: Event) -> None:
    log.warning("slow handler started on %s", event.id)
    await asyncio.Event().wait()  # until the drain timeout cancels it


@agent.on("task.nap.completed")
async def nap(event: Event) -> None:
    log.warning("nap started on %s", event.id)
    await asyncio.sleep(1.0)
    log.warning("nap done on %s", event.id)


def pair() -> list[Agent]:
    """A factory of two agents (not async)."""
    return [Agent("first", tenant="acme"), Agent("second", tenant="acme")]


async def made_later() -> Agent:
    """An async factory."""
    return Agent("later", tenant="acme")


not_an_agent = 42
