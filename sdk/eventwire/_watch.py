"""Stopping a nats-py KV watch so that nothing of it outlives the caller."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from nats.js.kv import KeyValue

_TASK_WAIT = 1.0
_CANCEL_ROUNDS = 10


async def start_watch(opening: Awaitable[KeyValue.KeyWatcher]) -> KeyValue.KeyWatcher:
    """Await ``opening`` (``kv.watch(...)``) so that a cancellation cannot leave a watch
    open: nats-py subscribes before it returns the watcher, so a caller cancelled in
    between would leak a subscription whose callback blocks, and a drain of the connection
    would wait for it. Cancelled, this waits for the watch to open, stops it and re-raises."""
    task = asyncio.ensure_future(opening)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task}, timeout=_TASK_WAIT * 5)
        if task.done() and not task.cancelled() and task.exception() is None:
            await stop_watch(task.result())
        else:
            task.cancel()
        raise


async def stop_watch(watcher: KeyValue.KeyWatcher) -> None:
    """Stop ``watcher`` and make sure its subscription's task ends (within a second).

    nats-py's ``stop`` only cancels that task, and Python 3.11's ``wait_for`` inside the
    watch's callback can swallow the cancellation: the task then waits for messages that
    never come, until it is garbage-collected still pending ("Task was destroyed but it is
    pending!"). So it is cancelled again until it ends. On a lost connection nats-py's
    unsubscribe raises before it cancels the watch's heartbeat tasks: those are cancelled
    here too."""
    sub = getattr(watcher, "_sub", None)
    inner = getattr(sub, "_sub", sub)
    task = getattr(inner, "_wait_for_msgs_task", None)
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: unannotated
    except nats.errors.Error:
        jsi = getattr(inner, "_jsi", None)
        for name in ("_hbtask", "_fctask"):
            side = getattr(jsi, name, None)
            if isinstance(side, asyncio.Task):
                side.cancel()
    if not isinstance(task, asyncio.Task):
        return
    for _ in range(_CANCEL_ROUNDS):
        if task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=_TASK_WAIT / _CANCEL_ROUNDS)
