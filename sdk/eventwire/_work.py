"""Work distribution by capability: one-of-N delivery through one shared durable consumer.

An event on a capability subject ``capability.<name>.<verb>`` (e.g. a ``HelpRequested``)
can be delivered two ways, chosen by the publisher per event:

* ``deliver="all"`` (the default, as before): published on ``capability.<name>.<verb>``;
  every agent with the capability receives it through its own consumer (broadcast).
* ``deliver="one"``: published on ``capability.<name>.work.<verb>``; one durable consumer
  per capability (``work-<hash>``), which every serving agent with the capability binds
  to, hands each event to exactly one of them (competing consumers). Agents handle it with
  the handlers they registered for ``capability.<name>.<verb>``.

The shared consumer acks only what was handled (and, being idempotent, records each handled
id so a redelivery is never handled twice); an agent that dies leaves its unacknowledged
events to be redelivered to the others after ``WORK_ACK_WAIT`` seconds (a live agent keeps
what it holds, handled or waiting for a handler slot, with in-progress acks). With nobody
serving, events wait in the events stream; the publisher learns it from :func:`work_status`
or from :class:`NobodyServing` when it asks to wait for a server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import nats.js.errors

from eventwire_security import consumer_name, events_stream_name

from ._choose import NobodyServing
from ._errors import InvalidArgument, InvalidEvent, mapped_nats_errors
from ._subjects import check_token, to_wire

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from nats.js import JetStreamContext

    from ._registry import AgentInfo

Deliver = Literal["all", "one"]
DEFAULT_DELIVER: Deliver = "all"
WORK = "work"  # the token that marks a one-of-N subject, and the shared consumer's owner
WORK_ACK_WAIT = 5.0  # seconds before a dead agent's unacknowledged event goes to another
# Events an agent pulls ahead of its handlers: few, so work is not held by one agent while
# others idle (what waits keeps in-progress acks, so it is not redelivered meanwhile).
WORK_BATCH = 8


def check_deliver(value: object) -> Deliver:
    if value not in ("all", "one"):
        raise InvalidArgument(f"must be 'all' or 'one', got {value!r}", field="deliver")
    return "all" if value == "all" else "one"


def checked_capability(value: str) -> str:
    """``value`` if it is a capability name (a subject token), else InvalidArgument."""
    try:
        return check_token(value, field="capability")
    except InvalidEvent as exc:
        raise InvalidArgument(
            str(exc.args[0]).removeprefix("capability: "), field="capability"
        ) from None


def work_subject(subject: str) -> str:
    """The one-of-N subject of a capability subject: ``capability.<name>.<verb>`` ->
    ``capability.<name>.work.<verb>``; :class:`InvalidArgument` for any other subject."""
    tokens = subject.split(".")
    if len(tokens) != 3 or tokens[0] != "capability" or tokens[2] == WORK:
        raise InvalidArgument(
            f"one-of-N delivery is for capability.<name>.<verb> subjects, not {subject!r}",
            field="deliver",
        )
    return f"capability.{tokens[1]}.{WORK}.{tokens[2]}"


def broadcast_subject(subject: str) -> str | None:
    """The capability subject a one-of-N subject stands for (its handlers' subject), or
    ``None`` if ``subject`` is not one."""
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[0] == "capability" and tokens[2] == WORK:
        return f"capability.{tokens[1]}.{tokens[3]}"
    return None


def work_pattern(capability: str) -> str:
    """What the shared consumer of ``capability`` filters (logical pattern)."""
    return f"capability.{checked_capability(capability)}.{WORK}.*"


def work_durable(capability: str) -> str:
    """The shared consumer's name: the same for every agent with ``capability``."""
    return consumer_name(WORK, work_pattern(capability))


@dataclass(frozen=True, slots=True)
class WorkStatus:
    """Where a capability's one-of-N work stands.

    ``pending``: events not yet delivered to anyone; ``in_progress``: delivered and not yet
    acknowledged; ``pulling``: outstanding pull requests (agents waiting for work right
    now); ``serving``: live agents with the capability in the registry. ``consumer`` is
    False until the first agent with the capability served (``pending`` then counts the
    stored events)."""

    capability: str
    pending: int
    in_progress: int
    pulling: int
    serving: int
    consumer: bool

    @property
    def nobody_serving(self) -> bool:
        return self.serving == 0


async def work_status(js: JetStreamContext, root: str, capability: str, serving: int) -> WorkStatus:
    """The status of ``capability``'s work (``serving`` comes from the registry)."""
    stream = events_stream_name(root)
    with mapped_nats_errors(f"reading the work status of {capability!r}"):
        try:
            info = await js.consumer_info(stream, work_durable(capability))
        except nats.js.errors.NotFoundError:
            wire = to_wire(root, work_pattern(capability))
            state = (await js.stream_info(stream, subjects_filter=wire)).state
            stored = sum((state.subjects or {}).values())
            return WorkStatus(capability, stored, 0, 0, serving, consumer=False)
    return WorkStatus(
        capability,
        info.num_pending or 0,
        info.num_ack_pending or 0,
        info.num_waiting or 0,
        serving,
        consumer=True,
    )


def serving(agents: Iterable[AgentInfo]) -> int:
    """How many live instances serve (those not suspected to have failed)."""
    return sum(1 for info in agents if not info.suspected)


_POLL = 0.1


async def until_served(
    status: Callable[[str], Awaitable[WorkStatus]], capability: str, timeout: float
) -> WorkStatus:
    """Poll ``status`` until someone serves ``capability``, or :class:`NobodyServing` after
    ``timeout`` seconds (the work is still stored and waits)."""
    deadline = time.monotonic() + timeout
    while True:
        current = await status(capability)
        if not current.nobody_serving:
            return current
        if time.monotonic() >= deadline:
            raise NobodyServing(
                capability,
                f"no live agent has this capability after {timeout}s; "
                f"{current.pending} event(s) wait for one",
            )
        await asyncio.sleep(_POLL)
