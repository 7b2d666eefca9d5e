"""A serving agent's view of the others: it watches the registry, feeds every heartbeat to a
:class:`FailureWatch`, and reports each suspected instance once as ``agent.lifecycle.failed``.

Every serving agent observes (``agent.failure_detector``; ``None`` turns it off). Their
reports of one failure carry the same ``Nats-Msg-Id``, so the events stream keeps one. An
observer reports only while its own heartbeats come back through the watch: one cut off
from the server sees everyone go silent and must not call them dead.

Tuning (heartbeats every ``registry_ttl / 3`` seconds): a silence is measured against the
observed intervals with one missed heartbeat allowed (``acceptable_pause``), so an instance
killed without a word is reported about two to three heartbeat intervals after its last
one (about 2.5 s with ``registry_ttl=3``, 12 s with the default 15), before its entry
expires. Its one-of-N work is redelivered to the other instances ``WORK_ACK_WAIT`` (5 s)
after it was last delivered or kept alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from nats.js.kv import KV_DEL, KV_PURGE

from ._errors import EventwireError
from ._failures import AgentFailed, Beat, FailureWatch, failure_msg_id
from ._phi import PhiSettings
from ._registry import parse_entry
from ._watch import start_watch, stop_watch

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._bus import Bus

log = logging.getLogger("eventwire.failures")


def settings_for(interval: float) -> PhiSettings:
    """Detector settings for heartbeats every ``interval`` seconds."""
    return PhiSettings(
        first_interval=interval,
        acceptable_pause=interval,
        min_std_deviation=max(interval / 10, 0.05),
    )


class FailureObserver:
    """The job of one agent's failure-detection loop (see the module docstring)."""

    def __init__(
        self, bus: Bus, identity: Identity, instance: str, settings: PhiSettings | None = None
    ) -> None:
        self._bus = bus
        self._identity = identity
        self._self = (identity.principal.agent, instance)
        self.interval = bus.registry_ttl / 3
        self.watch = FailureWatch(settings or settings_for(self.interval))
        self.reported: list[AgentFailed] = []
        self.closed = False

    def close(self) -> None:
        """Make :meth:`run` return at its next turn."""
        self.closed = True

    async def run(self) -> None:
        """Watch and report until cancelled."""
        kv: KeyValue = await self._bus.registry()
        watcher = await start_watch(kv.watchall())
        check_every = self.interval / 4
        next_check = time.monotonic() + check_every
        me = asyncio.current_task()
        try:
            # a cancellation that some await swallowed (3.11's wait_for, inside nats-py
            # too) still counts in cancelling(): it ends the loop all the same
            while not self.closed and (me is None or not me.cancelling()):
                entry = None
                # asyncio.timeout, not nats-py's updates(): 3.11's wait_for can swallow
                # the cancellation that stops this loop
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, next_check - time.monotonic())):
                        entry = await anext(watcher)
                if entry is not None:
                    self._seen(entry)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + check_every
                    await self._report()
        except StopAsyncIteration:
            return  # the watch was stopped
        finally:
            await stop_watch(watcher)

    def _seen(self, entry: KeyValue.Entry) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            agent, _, instance = entry.key.partition(".")
            self.watch.withdrawn(agent, instance)
            return
        codec = self._bus._running("watch the registry").codec
        info = parse_entry(entry.value or b"", codec, revision=entry.revision or 0)
        if info is not None:
            signed_at = info.last_seen.timestamp()
            beat = Beat(info.name, info.instance, info.revision, signed_at, info.capabilities)
            self.watch.heartbeat(beat)

    async def _report(self) -> None:
        own = self.watch.phi(*self._self)
        if own is None or own >= self.watch.settings.threshold:
            return  # our own heartbeats do not come back: we are the one cut off
        for failure in self.watch.due():
            if (failure.agent, failure.instance) == self._self:
                continue
            event = AgentFailed.of(failure)
            key = failure_msg_id(self._bus.root, failure)
            try:
                await self._bus.publish_report(event, identity=self._identity, key=key)
            except EventwireError as exc:
                log.warning(
                    "could not report %s/%s failed: %r", failure.agent, failure.instance, exc
                )
                continue
            self.reported.append(event)
            log.warning(
                "agent %s instance %s suspected failed (phi %.1f, last heartbeat rev %d)",
                failure.agent, failure.instance, failure.phi, failure.revision,
            )  # fmt: skip
