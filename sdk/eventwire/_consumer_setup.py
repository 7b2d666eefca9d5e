"""A subscription's durable consumer on the server: create it (from a start point, if the
options name one: see ``_start``), or bind to the one an admin provisioned; either way the
server's settings must be the code's, and the result is the consumer's start gate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from ._errors import NotProvisioned, StreamConfigError
from ._options import differences
from ._start import FromSequence, FromTime, LastN, StartGate, resolve

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.api import ConsumerConfig

    from ._options import Start

# A user without the right to a consumer gets no answer, only a permissions violation.
_BIND_WAIT = 3.0


@dataclass(frozen=True, slots=True)
class DurableConsumer:
    """The consumer ``durable`` on ``stream``, as the subscription wants it."""

    js: JetStreamContext
    stream: str
    durable: str

    async def create(
        self, config: ConsumerConfig, *, start: Start, lookback: float | None
    ) -> StartGate | None:
        """Create it as ``config`` says (from ``start``, if a point; with a look-back of
        ``lookback`` seconds before it: see ``_start``), or keep the existing one with the
        same settings; its start gate (None: it has none)."""
        gate: StartGate | None = None
        made: ConsumerConfig | None = config
        if isinstance(start, FromSequence | FromTime | LastN):
            made, gate = await self._from_point(config, start, lookback)
        try:
            if made is not None:  # None: it exists, made from a start point
                await self.js.add_consumer(self.stream, made)
        except nats.js.errors.BadRequestError as exc:
            raise StreamConfigError(
                f"consumer {self.durable!r} exists with other settings: {exc.description}"
            ) from None
        return gate

    async def _from_point(
        self, config: ConsumerConfig, start: FromSequence | FromTime | LastN, lookback: float | None
    ) -> tuple[ConsumerConfig | None, StartGate | None]:
        """A new consumer starting at the start point (and a look-back before it), or None
        to resume the existing one with the gate it was made with."""
        try:
            info = await self.js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            gate, settings = await resolve(self.js, self.stream, start, lookback)
            made = dataclasses.replace(config, metadata=gate.metadata(), **settings)  # type: ignore[arg-type]  # ConsumerConfig fields by name
            return made, gate
        if differs := differences(info.config, config):
            raise StreamConfigError(f"consumer {self.durable!r} differs: " + "; ".join(differs))
        return None, StartGate.of(info.config)

    async def bind(self, config: ConsumerConfig, *, pattern: str) -> StartGate | None:
        """Use the consumer an admin provisioned for ``pattern``, if its settings are
        ``config``'s; its start gate."""
        try:
            info = await self.js.consumer_info(self.stream, self.durable, timeout=_BIND_WAIT)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError) as exc:
            why = "is not" if isinstance(exc, nats.js.errors.NotFoundError) else "may not be"
            raise NotProvisioned(
                f"consumer {self.durable!r} for {pattern!r} {why} provisioned on "
                f"{self.stream!r} (no answer: absent, or this user may not use it); an admin "
                "creates it (`eventwire tenant provision`, eventwire.provision_agent) for "
                "patterns the policy lets the agent consume, exactly as the policy writes them"
            ) from None
        if differs := differences(info.config, config):
            raise StreamConfigError(f"consumer {self.durable!r} differs: " + "; ".join(differs))
        return StartGate.of(info.config)
