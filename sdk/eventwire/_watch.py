"""Stopping a nats-py KV watch so that nothing of it outlives the caller."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

_TASK_WAIT = 1.0


async def stop_watch(watcher: KeyValue.KeyWatcher) -> None:
    """Stop ``watcher`` and wait (up to a second) for its subscription's task to end.

    nats-py's ``stop`` only cancels that task: left to itself, a task cancelled while its
    callback waits can be garbage-collected still pending ("Task was destroyed but it is
    pending!"). On a lost connection its unsubscribe raises before it cancels the watch's
    heartbeat tasks, so those are cancelled here."""
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
        if isinstance(task, asyncio.Task):
            task.cancel()
    if isinstance(task, asyncio.Task) and not task.done():
        await asyncio.wait({task}, timeout=_TASK_WAIT)
