"""The kinds of event agents publish, as typed data models.

Each kind knows its CloudEvents ``type`` and the logical subject it is published on
(see :mod:`eventwire._subjects` for the table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from eventwire_security import MalformedClaims
from eventwire_security.hazmat import encode_claims

from ._errors import InvalidEvent
from ._subjects import MAX_TOKENS, check_subject, check_token

TYPE_PREFIX = "io.eventwire."


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
    """Base of the typed event kinds. Subclasses set ``event_type`` and define ``subject()``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)
    event_type: ClassVar[str]

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
    """A generic event: any subject under a known family, any ``type``, JSON ``data``.

    ``data`` is checked here as publishing checks it (the same encoder): anything JSON
    cannot hold (bytes, sets, NaN or infinity, lone surrogates, other objects) is an
    :class:`InvalidEvent` with ``field="data"`` now, not when it is published.
    """

    __slots__ = ("_data", "_subject", "event_type")

    def __init__(self, subject: str, type: str, data: JsonValue = None) -> None:
        self._subject = check_subject(subject)
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

    def __repr__(self) -> str:
        return f"CustomEvent({self._subject!r}, {self.event_type!r})"
