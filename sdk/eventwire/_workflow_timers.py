"""Durable workflow timers: JetStream message schedules (``Nats-Schedule: @at <time>``,
nats-server 2.12 or later) in a stream of their own, ``<root>-wftimers`` (declared in
``_streams``: made on first use, or bound to with ``provision=False``).

A timer of operation ``op`` of workflow ``id`` is a schedule on
``<root>.wftimer.at.<id>.<op>`` targeting ``<root>.wftimer.due.<id>.<op>``; publishing it
again replaces it (one message per subject), so scheduling is idempotent. The server
produces the due message at the time, also after its own restart; a durable consumer
(``wf-timers``) shared by the orchestrators turns each into "advance workflow id". A due
message is only a wake-up: the workflow's signed history says whether a timer is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig

from eventwire_security import EventwireError
from eventwire_security._layout import TIMERS_CONSUMER, wftimers_stream_name

from ._errors import mapped_nats_errors
from ._streams import open_declared, wftimers_stream_config

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from ._bus import Bus

__all__ = ["Timers", "timers_stream_name"]

log = logging.getLogger("eventwire.workflows")


def timers_stream_name(root: str) -> str:
    return wftimers_stream_name(root)


class Timers:
    """The timer stream of ``bus``'s root: schedule wake-ups, consume them."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.stream = timers_stream_name(bus.root)
        self._ready = False

    @property
    def _js(self) -> JetStreamContext:
        return self.bus.jetstream

    async def ensure(self) -> None:
        """Create the declared stream if it is missing; bound only (``provision=False``),
        require it (:class:`NotProvisioned`)."""
        if self._ready:
            return
        config = wftimers_stream_config(self.bus.root, replicas=self.bus.replicas)
        with mapped_nats_errors(f"open the stream {self.stream}"):
            await open_declared(self._js, config, create=self.bus.provisions)
        self._ready = True

    async def schedule(self, workflow_id: str, op: int, due: float) -> None:
        """Wake ``workflow_id`` up at ``due`` (epoch seconds), for its operation ``op``."""
        await self.ensure()
        at = datetime.fromtimestamp(due + 0.999, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        root = self.bus.root
        headers = {
            "Nats-Schedule": f"@at {at}",
            "Nats-Schedule-Target": f"{root}.wftimer.due.{workflow_id}.{op}",
        }
        with mapped_nats_errors(f"schedule a timer of {workflow_id}"):
            await self._js.publish(
                f"{root}.wftimer.at.{workflow_id}.{op}", b"", stream=self.stream, headers=headers
            )

    async def consume(self, wake: Callable[[str], Awaitable[None]], *, ack_wait: float) -> None:
        """Call ``wake(workflow_id)`` for each due timer (a fetched batch at once), until
        cancelled. A wake-up that fails is delivered again a second later; a consumer that
        cannot be made (no server) is tried again every second, with a warning."""
        while True:
            try:
                await self._consume(wake, ack_wait)
            except EventwireError as exc:
                log.warning("workflow timers: %s; trying again in 1 s", exc)
                await asyncio.sleep(1)

    async def _consume(self, wake: Callable[[str], Awaitable[None]], ack_wait: float) -> None:
        await self.ensure()
        subject = f"{self.bus.root}.wftimer.due.>"
        with mapped_nats_errors("consume workflow timers"):
            sub = await self._js.pull_subscribe(
                subject, durable=TIMERS_CONSUMER, stream=self.stream,
                config=ConsumerConfig(ack_wait=ack_wait),
            )  # fmt: skip
        try:
            while True:
                try:
                    messages = await sub.fetch(16, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                    log.warning("workflow timers: %s; pulling again", exc)
                    await asyncio.sleep(0.5)
                    continue
                await asyncio.gather(*(self._deliver(message, wake) for message in messages))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _deliver(self, message: Msg, wake: Callable[[str], Awaitable[None]]) -> None:
        workflow_id = message.subject.split(".")[-2]
        try:
            await wake(workflow_id)
        except Exception:
            log.exception("workflow %s: timer wake-up failed", workflow_id)
            with contextlib.suppress(Exception):
                await message.nak(delay=1)
            return
        with contextlib.suppress(Exception):
            await message.ack()
