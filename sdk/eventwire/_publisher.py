"""Pipelined JetStream publishing: each publish gets a future for its ack.

Like nats-py's ``publish_async`` but lighter per message (no random token per publish, no
semaphore timer): acks arrive on one wildcard inbox and resolve futures by sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import PubAck

from ._errors import PublishFailed

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription

    from ._codec import Signed

_NO_RESPONDERS = "503"
_SWEEP_EVERY = 4096
NO_LEADER_WINDOW = 20.0


class AckedPublisher:
    """Publishes on one connection and matches the stream's acks to their publishes."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        # token -> the ack's future, and what to call once it settles (a window's release)
        self._futures: dict[str, tuple[asyncio.Future[PubAck], Callable[[], None] | None]] = {}
        self._next = 0
        self._sub: NatsSubscription | None = None

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):  # the connection is closing anyway
                await self._sub.unsubscribe()
        for future, settled in self._futures.values():
            if future.cancel() and settled is not None:
                settled()
        self._futures.clear()

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        settled: Callable[[], None] | None = None,
    ) -> asyncio.Future[PubAck]:
        """Send now; the future resolves with the ack or fails with the server's error.

        ``settled`` is called when the ack (or the server's error) arrives, right there and
        not through the event loop; whoever fails or cancels the future instead calls it."""
        self._next += 1
        token = str(self._next)
        if self._next % _SWEEP_EVERY == 0:
            self._sweep()
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._futures[token] = (future, settled)
        await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        return future

    def _sweep(self) -> None:
        """Forget futures settled without an ack (timed out, cancelled): an ack removes its
        own entry, so only those remain, and they are dropped here now and then."""
        self._futures = {token: e for token, e in self._futures.items() if not e[0].done()}

    async def publish_acked(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        timeout: float,
        attempts: int,
        leader_wait: float = NO_LEADER_WINDOW,
    ) -> PubAck:
        """Publish and wait for the ack, retrying the same bytes on transient failures.

        Timeouts and a reconnecting connection are retried with backoff, ``attempts``
        times in all; "no responders" (a stream electing a leader) is retried for up to
        ``leader_wait`` seconds (default two election rounds). The ``Nats-Msg-Id`` makes a
        retry of an event that was stored after all a duplicate, not a second copy. Errors
        the server states (an API error) and a closed connection are not retried.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        leaderless_until: float | None = None
        for retry in itertools.count():
            try:
                future = await self.publish(subject, payload, headers)
                async with asyncio.timeout(timeout):
                    return await future
            except (nats.js.errors.APIError, nats.errors.ConnectionClosedError):
                raise
            except nats.js.errors.NoStreamResponseError:
                # No stream leader: an election takes 4-9 s. Wait it out, within bounds.
                leaderless_until = leaderless_until or loop.time() + leader_wait
                if loop.time() >= leaderless_until:
                    raise
            except (nats.errors.Error, TimeoutError):
                failures += 1
                if failures >= attempts:
                    raise
            await asyncio.sleep(min(1.0, 0.1 * 2**retry))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if entry is None or entry[0].done():
            return  # failed or cancelled before: whoever did that called ``settled``
        future, settled = entry
        self._settle(future, msg)
        if settled is not None:
            settled()

    @staticmethod
    def _settle(future: asyncio.Future[PubAck], msg: Msg) -> None:
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            response = json.loads(msg.data)
            if "error" in response:
                nats.js.errors.APIError.from_error(response["error"])  # raises the typed error
            future.set_result(_pub_ack(response))
        except nats.js.errors.APIError as exc:
            future.set_exception(exc)
        except (ValueError, TypeError, KeyError) as exc:
            future.set_exception(nats.errors.Error(f"unreadable publish ack: {exc!r}"))


def _pub_ack(response: dict[str, Any]) -> PubAck:
    """``PubAck.from_response`` without its generic field conversion (a third of the cost)."""
    if type(response.get("stream")) is not str or type(response.get("seq")) is not int:
        return PubAck.from_response(response)
    return PubAck(
        stream=response["stream"],
        seq=response["seq"],
        domain=response.get("domain"),
        duplicate=response.get("duplicate"),
    )


async def acquire_slot(
    slots: asyncio.Semaphore, sent: list[tuple[Signed, asyncio.Future[PubAck]]], timeout: float
) -> None:
    """A window slot; if no ack came for ``timeout`` seconds (server gone), the unacked
    publishes are given up on here, to be sent again one by one once the window drains."""
    if not slots.locked():  # a free slot: no timer needed
        await slots.acquire()
        return
    try:
        async with asyncio.timeout(timeout):
            await slots.acquire()
    except TimeoutError:
        for _, future in sent:
            if not future.done():
                future.set_exception(TimeoutError())
                slots.release()
        await slots.acquire()


def publish_error(exc: BaseException, subject: str) -> PublishFailed:
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return PublishFailed("no stream answered (no responders)", subject=subject)
    if isinstance(exc, nats.js.errors.APIError):
        return PublishFailed(str(exc.description), subject=subject, code=exc.err_code)
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return PublishFailed("timed out waiting for the stream's ack", subject=subject)
    return PublishFailed(repr(exc), subject=subject)
