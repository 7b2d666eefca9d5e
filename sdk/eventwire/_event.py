"""The CloudEvents 1.0 event as it travels, with eventwire's extension attributes.

Whatever a keyring member signs is input: every claim is validated, completely, before
anything uses it. Strings are non-empty, without control characters (Unicode ``Cc``; lone
surrogates are refused by the strict parse), and at most: :data:`MAX_ID_CHARS` for ``id``,
``correlationid``, ``causationid`` and ``partitionkey``; :data:`MAX_TYPE_CHARS` for ``type``;
:data:`MAX_SUBJECT_CHARS` for ``subject``; :data:`MAX_NAME_CHARS` for ``tenant`` and
``root`` (``source`` is ``tenant/agent``); :data:`MAX_TRACEPARENT_CHARS` for
``traceparent``; ``dataschema`` is an absolute URI of at most :data:`MAX_DATASCHEMA_CHARS`
(see :mod:`eventwire._kinds`). ``iat`` and ``exp`` are integers from 0 to
:data:`MAX_SECONDS`. ``vclock`` (optional, causal order) is an object of at most
:data:`MAX_VCLOCK_ENTRIES` source strings (like ``source``) to integers from 0 to
:data:`MAX_SECONDS`, with an entry >= 1 for the event's own ``source``. ``data`` is any JSON
value, bounded by the body's size. Claims that do not fit are refused as ``invalid-event``;
publishing refuses them the same way (:class:`InvalidEvent`).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SkipValidation,
    StrictInt,
    StringConstraints,
)
from pydantic import ValidationError as PydanticValidationError

from ._errors import InvalidEvent, SealedForOthers
from ._ids import uuid7
from ._kinds import KINDS, MAX_DATASCHEMA_CHARS, EventData, check_dataschema
from ._subjects import DEFAULT_ROOT, MAX_TOKENS

if TYPE_CHECKING:
    import builtins

    from eventwire_security import Principal

SEALED = "application/jose+json"
MAX_ID_CHARS = 256
MAX_TYPE_CHARS = 256
MAX_NAME_CHARS = 64  # tenant and agent names, subject tokens
MAX_SUBJECT_CHARS = MAX_TOKENS * (MAX_NAME_CHARS + 1) - 1
MAX_TRACEPARENT_CHARS = 512
MAX_SECONDS = 2**53  # iat / exp: JSON's exact integers, far beyond any real time
MAX_VCLOCK_ENTRIES = 64  # sources in one vector clock
MAX_EVENT_TIME = 253402300800  # 10000-01-01T00:00:00Z: a chosen event time stays RFC 3339
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]+$"  # Unicode Cc: C0, DEL, C1
_NO_CONTROL_RE = re.compile(r"\A[^\x00-\x1f\x7f-\x9f\ud800-\udfff]+\Z")  # and no surrogates
_CONTROL = "String should have no control characters"
_NOT_A_URI = "String should be an absolute URI without spaces or control characters"


def _text(max_chars: int) -> StringConstraints:
    """A strict, non-empty string of at most ``max_chars`` without control characters."""
    return StringConstraints(strict=True, min_length=1, max_length=max_chars, pattern=_NO_CONTROL)


_Id = Annotated[str, _text(MAX_ID_CHARS)]
_Name = Annotated[str, _text(MAX_NAME_CHARS)]
_Source = Annotated[str, _text(2 * MAX_NAME_CHARS + 1)]  # tenant/agent
_Type = Annotated[str, _text(MAX_TYPE_CHARS)]
_Subject = Annotated[str, _text(MAX_SUBJECT_CHARS)]
_TraceParent = Annotated[str, _text(MAX_TRACEPARENT_CHARS)]
_Seconds = Annotated[StrictInt, Field(ge=0, le=MAX_SECONDS)]
# An absolute URI: a scheme, then no spaces or control characters (as check_dataschema).
_DataSchema = Annotated[
    str,
    StringConstraints(
        strict=True,
        min_length=1,
        max_length=MAX_DATASCHEMA_CHARS,
        pattern=r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f-\x9f]+$",
    ),
]
_VClock = Annotated[dict[_Source, _Seconds], Field(max_length=MAX_VCLOCK_ENTRIES)]
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
    id: _Id
    source: _Source
    type: _Type
    subject: _Subject
    time: Annotated[datetime, BeforeValidator(_rfc3339)]
    datacontenttype: Literal["application/json", "application/jose+json"]
    # Parsed from strict JSON, so already a JSON value: not walked again.
    data: SkipValidation[JsonValue]
    tenant: _Name
    root: _Name
    iat: _Seconds
    exp: _Seconds | None = None
    correlationid: _Id
    causationid: _Id | None = None
    traceparent: _TraceParent | None = None
    partitionkey: _Id | None = None
    dataschema: _DataSchema | None = None
    vclock: _VClock | None = None

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

    def parse(self, kind: builtins.type[_K], *, strict: bool = False) -> _K:
        """Parse ``data`` as ``kind``; :class:`InvalidEvent` if it does not fit.

        Tolerant by default: fields ``kind`` does not define (a newer publisher's schema)
        are kept in the result's ``extra``. ``strict=True`` refuses them with
        :class:`InvalidEvent` (``field="data.<name>"``), which dead-letters the event at
        once when raised by a handler. Claims are never tolerated: an event with an
        unknown CloudEvents attribute was refused before any handler ran."""
        if not self.readable:
            raise SealedForOthers(self.id)
        if self.type != kind.event_type:
            raise InvalidEvent(
                f"event type is {self.type!r}, not {kind.event_type!r}", field="type"
            )
        data, extra = _split_known(kind, self.data)
        if extra and strict:
            names = ", ".join(sorted(extra))
            schema = self.dataschema or "no dataschema"
            detail = f"unknown field(s) {names} for {kind.__name__} (strict parse; {schema})"
            raise InvalidEvent(detail, field=f"data.{min(extra)}")
        try:
            parsed = kind.model_validate(data)
        except PydanticValidationError as exc:
            raise InvalidEvent(_first_error(exc), field="data") from None
        if extra:
            parsed._keep_extra(extra)
        return parsed


def _split_known(kind: type[EventData], data: JsonValue) -> tuple[JsonValue, dict[str, Any]]:
    """``data`` with only the fields ``kind`` defines (by name or alias), and the rest."""
    if not isinstance(data, dict):
        return data, {}
    known = _field_names(kind)
    if known.issuperset(data):
        return data, {}
    extra = {name: value for name, value in data.items() if name not in known}
    return {name: value for name, value in data.items() if name in known}, extra


@functools.cache
def _field_names(kind: type[EventData]) -> frozenset[str]:
    fields = kind.model_fields
    return frozenset(fields) | {f.alias for f in fields.values() if f.alias is not None}


def _first_error(exc: PydanticValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"]
    if error["type"] == "string_pattern_mismatch":
        message = _NOT_A_URI if where == "dataschema" else _CONTROL
    return f"{where}: {message}" if where else str(message)


def _check_text(name: str, value: object, max_chars: int) -> str:
    """``value`` if it is a claim string a receiver accepts; :class:`InvalidEvent` if not."""
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise InvalidEvent(f"must be a non-empty string of at most {max_chars} chars", field=name)
    if not _NO_CONTROL_RE.match(value):
        raise InvalidEvent("must have no control characters or lone surrogates", field=name)
    return value


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
    vclock: Mapping[str, int] | None = None,
    event_time: datetime | None = None,
) -> dict[str, Any]:
    """The claims of a new event from ``principal`` under subject root ``root``: id, time,
    correlation, and an expiry only when ``ttl`` (seconds) is given. ``event_time`` signs a
    chosen CloudEvents ``time`` (when it happened) instead of now; ``vclock`` a vector clock."""
    event_id = uuid7()
    now = time.time()
    when = now if event_time is None else _check_event_time(event_time)
    claims: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": principal.source,
        "type": item.event_type,
        "subject": item.subject(),
        "time": datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z"),
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
    schema_of = getattr(item, "dataschema", None)  # kinds and CustomEvent; optional
    schema = schema_of() if callable(schema_of) else None
    if schema is not None:
        claims["dataschema"] = check_dataschema(schema)
    for name, value, max_chars in (
        ("correlationid", correlation_id, MAX_ID_CHARS),
        ("causationid", causation_id, MAX_ID_CHARS),
        ("partitionkey", partition_key, MAX_ID_CHARS),
        ("traceparent", traceparent, MAX_TRACEPARENT_CHARS),
    ):
        if value is not None:
            claims[name] = _check_text(name, value, max_chars)
    if vclock is not None:
        claims["vclock"] = check_vclock(vclock, principal.source)
    return claims


def _check_event_time(value: object) -> float:
    """Seconds since the epoch of a timezone-aware ``datetime``; :class:`InvalidEvent` if not."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidEvent("must be a timezone-aware datetime", field="event_time")
    seconds = value.timestamp()
    if not 0 <= seconds < MAX_EVENT_TIME:
        raise InvalidEvent("must be between 1970 and 9999", field="event_time")
    return seconds


def check_vclock(value: object, source: str) -> dict[str, int]:
    """``value`` as a vector clock claim of an event from ``source``; :class:`InvalidEvent`
    if it does not fit (what a receiver refuses, see the module's docstring)."""
    if not isinstance(value, Mapping):
        raise InvalidEvent("must be an object of source -> count", field="vclock")
    if not 0 < len(value) <= MAX_VCLOCK_ENTRIES:
        raise InvalidEvent(f"must have 1 to {MAX_VCLOCK_ENTRIES} entries", field="vclock")
    clock: dict[str, int] = {}
    for key, count in value.items():
        _check_text("vclock", key, 2 * MAX_NAME_CHARS + 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SECONDS:
            raise InvalidEvent(f"count of {key!r} must be an int >= 0", field="vclock")
        clock[key] = count
    if clock.get(source, 0) < 1:
        raise InvalidEvent(f"must count the event's own source {source!r}", field="vclock")
    return clock


def event_from_claims(claims: dict[str, Any], kid: str) -> Event:
    """Validate verified claims into an :class:`Event`; :class:`InvalidEvent` if they do not fit."""
    try:
        event = Event.model_validate(claims)
    except PydanticValidationError as exc:
        raise InvalidEvent(_first_error(exc)) from None
    if event.vclock is not None and event.vclock.get(event.source, 0) < 1:
        raise InvalidEvent(f"must count the event's own source {event.source!r}", field="vclock")
    object.__setattr__(event, "_kid", kid)
    return event
