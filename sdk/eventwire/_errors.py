"""The one exception tree of ``eventwire``. Foreign errors (nats, security) are mapped here."""

from __future__ import annotations


class EventwireError(Exception):
    """Base of every error raised by ``eventwire``."""


class InvalidEvent(EventwireError, ValueError):
    """An event, subject or pattern is not valid. ``field`` names what is wrong where known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message if field is None else f"{field}: {message}")
        self.field = field


class EventTooLarge(InvalidEvent):
    """The signed event is larger than the server accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"signed event is {size} bytes, the limit is {limit}")
        self.size = size
        self.limit = limit


class ServerError(EventwireError):
    """The embedded nats-server could not be found, started or stopped."""


class ConnectionFailed(EventwireError):
    """No connection to NATS could be made, or it was lost and not regained."""


class NotRunning(EventwireError):
    """The bus, agent or subscription is not (or no longer) running."""


class PublishFailed(EventwireError):
    """JetStream did not store the event. ``code`` is the server's error code if any."""

    def __init__(self, message: str, *, subject: str, code: int | None = None) -> None:
        super().__init__(f"publish to {subject!r} failed: {message}")
        self.subject = subject
        self.code = code


class StreamConfigError(EventwireError):
    """A stream or consumer exists on the server with settings the code does not expect."""


class NotProvisioned(StreamConfigError):
    """A stream, bucket or consumer that a bus with ``provision=False`` binds to is absent:
    an admin creates it (``eventwire tenant provision``, or a bus with ``provision=True``)."""

    @classmethod
    def absent(cls, what: str) -> NotProvisioned:
        return cls(
            f"{what} does not exist; an admin creates it "
            "(`eventwire tenant provision`, or a bus connected with provision=True)"
        )


class RequestFailed(EventwireError):
    """A direct request got no valid answer."""

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(f"request to {target!r}: {message}")
        self.target = target


class RequestTimeout(RequestFailed, TimeoutError):
    """No reply arrived within the timeout."""


class NoResponders(RequestFailed):
    """No instance of the target agent is serving requests."""


class ReplyRejected(RequestFailed):
    """A reply arrived but failed verification (forged, wrong signer, not for this request)."""

    def __init__(self, message: str, *, target: str, reason: str) -> None:
        super().__init__(message, target=target)
        self.reason = reason


class RemoteError(RequestFailed):
    """The target agent answered with a signed error (its handler raised or it refused)."""

    def __init__(self, message: str, *, target: str, code: str | None) -> None:
        super().__init__(message, target=target)
        self.code = code


class WrongTenant(EventwireError):
    """An identity of one tenant was used on a bus of another."""

    def __init__(self, identity_tenant: str, bus_tenant: str) -> None:
        super().__init__(
            f"identity belongs to tenant {identity_tenant!r}, the bus serves {bus_tenant!r}"
        )
        self.identity_tenant = identity_tenant
        self.bus_tenant = bus_tenant


class ConfigError(EventwireError, ValueError):
    """A setting is out of range or inconsistent."""


class Unprocessable(EventwireError):
    """Raise from a handler when an event can never be processed: it is dead-lettered at
    once, with this message as the reason, instead of being retried."""


class DeadLetterError(EventwireError):
    """The dead-letter queue could not store, find or redrive an entry."""


class Forbidden(EventwireError):
    """The policy does not allow this actor to publish (or consume) on this subject."""

    def __init__(self, source: str, action: str, subject: str, reason: str) -> None:
        super().__init__(f"{source} may not {action} {subject!r}: {reason}")
        self.source = source
        self.action = action
        self.subject = subject
        self.reason = reason


class SealedForOthers(EventwireError):
    """The event's data is sealed to other recipients: this agent cannot read it."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} is sealed, not for you")
        self.event_id = event_id
