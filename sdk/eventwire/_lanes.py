"""Per-key ordering with concurrency: events of one key run one after another, in the
order they arrived; events of different keys run side by side."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class KeyLanes:
    """Chains work by key inside a task group; a key's lane is gone once it is idle."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}

    def run(self, group: asyncio.TaskGroup, key: str, work: Callable[[], Awaitable[None]]) -> None:
        previous = self._tails.get(key)

        async def in_turn() -> None:
            if previous is not None:
                await asyncio.wait({previous})  # its outcome is its own business
            await work()

        task = group.create_task(in_turn())
        self._tails[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    def __len__(self) -> int:
        return len(self._tails)
