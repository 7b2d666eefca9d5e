"""Whom to seal to: agent names and capabilities resolved to sealing keys via the registry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from eventwire_security import RecipientKey

from ._errors import InvalidEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ._registry import AgentInfo

RECIPIENTS_TTL = 5.0


class Recipients:
    """Sealing keys for agent names, ``capability:<name>`` or keys given as they are.

    The registry listing (``live()``) is reused for ``ttl`` seconds and read again once
    when a name is not in it (an agent that just started)."""

    def __init__(
        self, live: Callable[[], Awaitable[list[AgentInfo]]], ttl: float = RECIPIENTS_TTL
    ) -> None:
        self._live = live
        self._ttl = ttl
        self._seen: list[AgentInfo] = []
        self._at = float("-inf")

    async def keys(self, wanted: Sequence[str | RecipientKey]) -> list[RecipientKey]:
        now = time.monotonic()
        fresh = now - self._at < self._ttl
        try:
            return sealing_keys(wanted, self._seen if fresh else [])
        except InvalidEvent:
            self._seen, self._at = await self._live(), now
            return sealing_keys(wanted, self._seen)


def sealing_keys(wanted: Sequence[str | RecipientKey], live: list[AgentInfo]) -> list[RecipientKey]:
    keys: dict[str, RecipientKey] = {}
    for target in wanted:
        if isinstance(target, RecipientKey):
            keys[target.kid] = target
            continue
        capability = target.removeprefix("capability:")
        found = [
            info.sealing_key
            for info in live
            if info.sealing_key is not None
            and (capability in info.capabilities if capability != target else info.name == target)
        ]
        if not found:
            raise InvalidEvent(f"no live agent to seal to for {target!r}", field="seal_to")
        keys.update((key.kid, key) for key in found)
    return list(keys.values())
