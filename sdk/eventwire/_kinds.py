"""The kinds of event agents publish, as typed data models.

Each kind knows its CloudEvents ``type`` and the logical subject it is published on
(see :mod:`eventwire._subjects` for the table).
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from eventwire_security import MalformedClaims
from eventwire_security.hazmat import encode_claims

from ._errors import InvalidEvent
from ._subjects import MAX_TOKENS, check_subject, check_token

if TYPE_CHECKING:
    from collections.abc import Mapping

TYPE_PREFIX = "io.eventwire."
SCHEMA_PREFIX = "urn:eventwire:schema:"
MAX_DATASCHEMA_CHARS = 512
# An absolute URI (RFC 3986 scheme, then no spaces or control characters), e.g. a URN.
_DATASCHEMA = re.compile(r"\A[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f-\x9f\ud800-\udfff]+\Z")
_NO_EXTRA: Mapping[str, JsonValue] = MappingProxyType({})


def check_dataschema(value: object, *, field: str = "dataschema") -> str:
    """A CloudEvents ``dataschema``: an absolute URI of at most :data:`MAX_DATASCHEMA_CHARS`."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_DATASCHEMA_CHARS:
        raise InvalidEvent(
            f"must be a non-empty string of at most {MAX_DATASCHEMA_CHARS} chars", field=field
        )
    if not _DATASCHEMA.match(value):
        raise InvalidEvent(
            "must be an absolute URI (scheme:rest) without spaces or control characters",
            field=field,
        )
    return value


def _token(value: str) -> str:
    return check_token(value, field="token")


def _dotted(value: str) -> str:
    parts = value.split(".")
    if len(parts) > MAX_TOKENS - 1:  # the family token comes first
        raise ValueError(f"at most {MAX_TOKENS - 1} dot-separated tokens")
    for part in parts:
        check_token(part, field="token")
    return value


Token = Annotated[str, AfterValidator(_token)]
DottedTokens = Annotated[str, AfterValidator(_dotted)]
Severity = Literal["info", "warning", "error", "critical"]


class EventData(BaseModel):
    """Base of the typed event kinds. Subclasses set ``event_type`` and define ``subject()``.

    Schema evolution: a kind's ``schema_version`` (default 1) names its data schema, signed
    into each event as the CloudEvents ``dataschema`` (``urn:eventwire:schema:<type>:<n>``,
    or ``schema_uri`` when a kind sets one). A newer publisher adds fields with defaults and
    raises the version; the type stays. Receivers read tolerantly: fields their kind does
    not define are kept in :attr:`extra`, not dropped and not refused (``event.parse(kind,
    strict=True)`` refuses them). Building a kind here still refuses unknown fields.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)
    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    schema_uri: ClassVar[str | None] = None

    # A slot, not a pydantic private attribute (those cost per event to set up).
    __slots__ = ("_extra",)

    if not TYPE_CHECKING:  # type checkers keep pydantic's typed constructor

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error["loc"])
                raise InvalidEvent(f"{type(self).__name__}: {error['msg']}", field=where) from None

    def subject(self) -> str:
        raise NotImplementedError

    def data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def dataschema(cls) -> str:
        """The ``dataschema`` claim of this kind's events (see the class docstring)."""
        if cls.schema_uri is not None:
            return check_dataschema(cls.schema_uri, field="schema_uri")
        version = cls.schema_version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidEvent(f"must be an int >= 1, got {version!r}", field="schema_version")
        return f"{SCHEMA_PREFIX}{cls.event_type}:{version}"

    @property
    def extra(self) -> Mapping[str, JsonValue]:
        """Fields of the received data this kind does not define (from a newer publisher),
        as they arrived; empty for data built here or parsed with ``strict=True``."""
        return getattr(self, "_extra", _NO_EXTRA)

    def _keep_extra(self, extra: dict[str, JsonValue]) -> None:
        object.__setattr__(self, "_extra", MappingProxyType(extra))


class KnowledgeShared(EventData):
    """An agent shares something it learned. Subject ``knowledge.<topic>``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "knowledge.shared"
    topic: DottedTokens
    content: str
    confidence: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    tags: list[str] = Field(default_factory=list, strict=False)  # tuples welcome

    def subject(self) -> str:
        return f"knowledge.{self.topic}"


class HelpRequested(EventData):
    """An agent asks any agent with ``capability`` for help. Subject ``capability.<name>.help``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "help.requested"
    capability: Token
    question: str
    context: dict[str, JsonValue] = Field(default_factory=dict)

    def subject(self) -> str:
        return f"capability.{self.capability}.help"


class TaskCompleted(EventData):
    """A task finished. Subject ``task.<task_type>.completed``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "task.completed"
    task_type: Token
    task_id: str
    result: JsonValue = None

    def subject(self) -> str:
        return f"task.{self.task_type}.completed"


class ErrorReported(EventData):
    """Something went wrong. Subject ``error.<severity>``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "error.reported"
    severity: Severity
    message: str
    code: str | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)

    def subject(self) -> str:
        return f"error.{self.severity}"


class StatusUpdate(EventData):
    """A component's state changed. Subject ``status.<component>``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "status.update"
    component: Token
    state: str
    details: dict[str, JsonValue] = Field(default_factory=dict)

    def subject(self) -> str:
        return f"status.{self.component}"


class AgentLifecycle(EventData):
    """Published by the SDK when an agent starts or stops. Subject ``agent.lifecycle.<phase>``."""

    event_type: ClassVar[str] = TYPE_PREFIX + "agent.lifecycle"
    agent: Token
    phase: Literal["started", "stopped"]
    instance: str
    capabilities: list[str] = Field(default_factory=list, strict=False)

    def subject(self) -> str:
        return f"agent.lifecycle.{self.phase}"


KINDS: dict[str, type[EventData]] = {
    kind.event_type: kind
    for kind in (
        KnowledgeShared,
        HelpRequested,
        TaskCompleted,
        ErrorReported,
        StatusUpdate,
        AgentLifecycle,
    )
}


class CustomEvent:
    """A generic event: any subject under a known family, any ``type``, JSON ``data``, and
    optionally a ``dataschema`` URI (signed as the CloudEvents attribute).

    ``data`` is checked here as publishing checks it (the same encoder): anything JSON
    cannot hold (bytes, sets, NaN or infinity, lone surrogates, other objects) is an
    :class:`InvalidEvent` with ``field="data"`` now, not when it is published.
    """

    __slots__ = ("_data", "_dataschema", "_subject", "event_type")

    def __init__(
        self, subject: str, type: str, data: JsonValue = None, *, dataschema: str | None = None
    ) -> None:
        self._subject = check_subject(subject)
        self._dataschema = None if dataschema is None else check_dataschema(dataschema)
        if not isinstance(type, str) or not 0 < len(type) <= 256:
            raise InvalidEvent("must be a non-empty string of at most 256 chars", field="type")
        self.event_type = type
        try:
            encode_claims({"data": data})
        except MalformedClaims as exc:
            raise InvalidEvent(exc.detail, field="data") from None
        self._data = data

    def subject(self) -> str:
        return self._subject

    def data(self) -> JsonValue:
        return self._data

    def dataschema(self) -> str | None:
        """The ``dataschema`` claim (a URI naming the data's schema and version), if given."""
        return self._dataschema

    def __repr__(self) -> str:
        return f"CustomEvent({self._subject!r}, {self.event_type!r})"
