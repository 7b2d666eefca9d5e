"""The CloudEvents 1.0 event as it travels, with eventwire's extension attributes."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    JsonValue,
    SkipValidation,
    StrictInt,
    StrictStr,
)
from pydantic import ValidationError as PydanticValidationError

from ._errors import InvalidEvent, SealedForOthers
from ._ids import uuid7
from ._kinds import KINDS, EventData
from ._subjects import DEFAULT_ROOT

if TYPE_CHECKING:
    import builtins

    from eventwire_security import Principal

SEALED = "application/jose+json"
_RFC3339 = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")


def _rfc3339(value: object) -> datetime:
    """CloudEvents ``time``: an RFC 3339 timestamp string with an offset, nothing looser."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 timestamp with offset, e.g. 2026-01-01T00:00:00Z")
    return datetime.fromisoformat(value)


_K = TypeVar("_K", bound=EventData)


class Publishable(Protocol):
    """What ``publish`` accepts: an :class:`EventData` kind or a :class:`CustomEvent`."""

    @property
    def event_type(self) -> str: ...

    def subject(self) -> str: ...

    def data(self) -> Any: ...


class Event(BaseModel):
    """A verified event. ``source`` is ``tenant/agent`` and was checked against the signer."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    specversion: Literal["1.0"]
    id: StrictStr
    source: StrictStr
    type: StrictStr
    subject: StrictStr
    time: Annotated[datetime, BeforeValidator(_rfc3339)]
    datacontenttype: Literal["application/json", "application/jose+json"]
    # Parsed from strict JSON, so already a JSON value: not walked again.
    data: SkipValidation[JsonValue]
    tenant: StrictStr
    root: StrictStr
    iat: StrictInt
    exp: StrictInt | None = None
    correlationid: StrictStr
    causationid: StrictStr | None = None
    traceparent: StrictStr | None = None
    partitionkey: StrictStr | None = None

    # Slots, not pydantic private attributes: those cost ~10 us per event to set up.
    __slots__ = ("_kid", "_opened")

    @property
    def signer_kid(self) -> str:
        """The ``kid`` of the key that signed this event."""
        return getattr(self, "_kid", "")

    @property
    def sealed(self) -> bool:
        """Whether the data was sealed (encrypted) to chosen recipients."""
        return self.datacontenttype == SEALED

    @property
    def readable(self) -> bool:
        """False for sealed data this agent is not a recipient of: ``data`` is then the
        JWE, never plaintext, and :meth:`parse` raises :class:`SealedForOthers`."""
        return not self.sealed or getattr(self, "_opened", False)

    def opened(self, data: JsonValue) -> Event:
        """This event with its sealed data replaced by the opened plaintext."""
        event = self.model_copy(update={"data": data})
        object.__setattr__(event, "_kid", self.signer_kid)
        object.__setattr__(event, "_opened", True)
        return event

    @property
    def agent(self) -> str:
        return self.source.partition("/")[2]

    @property
    def body(self) -> EventData | None:
        """The typed data for a known kind, ``None`` for custom types."""
        kind = KINDS.get(self.type)
        return None if kind is None or not self.readable else self.parse(kind)

    def parse(self, kind: builtins.type[_K]) -> _K:
        """Parse ``data`` as ``kind``; :class:`InvalidEvent` if it does not fit."""
        if not self.readable:
            raise SealedForOthers(self.id)
        if self.type != kind.event_type:
            raise InvalidEvent(
                f"event type is {self.type!r}, not {kind.event_type!r}", field="type"
            )
        try:
            return kind.model_validate(self.data)
        except PydanticValidationError as exc:
            raise InvalidEvent(_first_error(exc), field="data") from None


def _first_error(exc: PydanticValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def build_claims(
    item: Publishable,
    principal: Principal,
    *,
    root: str = DEFAULT_ROOT,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    partition_key: str | None = None,
    traceparent: str | None = None,
    ttl: float | None = None,
) -> dict[str, Any]:
    """The claims of a new event from ``principal`` under subject root ``root``: id, time,
    correlation, and an expiry only when ``ttl`` (seconds) is given."""
    event_id = uuid7()
    now = time.time()
    claims: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": principal.source,
        "type": item.event_type,
        "subject": item.subject(),
        "time": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": item.data(),
        "tenant": principal.tenant,
        "root": root,
        "iat": int(now),
        "correlationid": event_id if correlation_id is None else correlation_id,
    }
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9:
            raise InvalidEvent(f"must be a number of seconds > 0, got {ttl!r}", field="ttl")
        claims["exp"] = claims["iat"] + math.ceil(ttl)  # whole seconds after iat
    for name, value in (
        ("correlationid", correlation_id),
        ("causationid", causation_id),
        ("partitionkey", partition_key),
        ("traceparent", traceparent),
    ):
        if value is not None:
            if not isinstance(value, str) or not value:
                raise InvalidEvent("must be a non-empty string", field=name)
            claims[name] = value
    return claims


def event_from_claims(claims: dict[str, Any], kid: str) -> Event:
    """Validate verified claims into an :class:`Event`; :class:`InvalidEvent` if they do not fit."""
    try:
        event = Event.model_validate(claims)
    except PydanticValidationError as exc:
        raise InvalidEvent(_first_error(exc)) from None
    object.__setattr__(event, "_kid", kid)
    return event
