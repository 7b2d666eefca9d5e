"""The one exception tree of ``eventwire``. Foreign errors (nats, security) are mapped here.

Public entry points raise only these (and ``TypeError`` for a wrong type where the type
system should have caught it): a nats-py error is mapped by :func:`nats_error` (or the
:func:`mapped_nats_errors` block) and raised ``from`` the original, so the cause is kept.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

# The root of the one error tree is defined in the security package (the bottom layer) so
# that its errors are EventwireErrors too; the SDK's errors below derive from it.
from eventwire_security import EventwireError as EventwireError  # noqa: PLC0414 - re-exported
from eventwire_security import InvalidName, check_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._resource import ResourceState




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


class TransportError(EventwireError):
    """Talking to NATS failed. Subclasses say how; a plain one maps a nats-py error that
    has no closer match (e.g. a subject or payload the client itself refused)."""


class ConnectionFailed(TransportError):
    """No connection to NATS could be made, or it was lost and not regained. ``url`` is
    the server URL without credentials (never a password, in ``url`` or the message)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ConnectionRefused(ConnectionFailed):
    """Nothing listens at the server's address and port (the server is down, or another
    port): known at once."""


class HostNotFound(ConnectionFailed):
    """The server's host name does not resolve (DNS): known at once."""


class ConnectTimeout(ConnectionFailed, TimeoutError):
    """The server did not answer within the connect timeout (a firewall dropping packets,
    an overloaded or unreachable host)."""


class AuthenticationFailed(ConnectionFailed):
    """The server refused the credentials (``Authorization Violation``): retrying with the
    same ones will not help."""


class OperationTimeout(TransportError, TimeoutError):
    """The server did not answer in time."""


class ServerUnavailable(TransportError):
    """Nobody answered the request: JetStream is not enabled for the account, or a stream
    has no leader (an election is under way)."""


class ServerRejected(TransportError):
    """The JetStream API refused a request: ``code`` (HTTP-like), ``err_code`` (JetStream's
    own, e.g. 10058 stream name in use) and the server's ``description``."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        err_code: int | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code
        self.description = description


class NotFound(EventwireError, LookupError):
    """What was asked for (a stream, a bucket, a key, an entry) does not exist."""


class ClosedResource(EventwireError):
    """The bus, subscription or agent is not running: not opened yet, still opening,
    closing, closed, or failed. ``state`` (a :class:`ResourceState`, None where unknown)
    says which. Like trio's ``ClosedResourceError``; :class:`NotRunning` is its old name."""

    def __init__(self, message: str, *, state: ResourceState | None = None) -> None:
        super().__init__(message)
        self.state = state


NotRunning = ClosedResource
"""The name of :class:`ClosedResource` before Core v1 (kept: it is the same class)."""


class ResourceFailed(ClosedResource):
    """A background task of the resource died of an error it cannot recover from (a bug, a
    connection closed for good): the resource stopped working. Raised by its ``close()``
    (once) and by every use after; ``__cause__`` is the error that killed it."""


class BusyResource(EventwireError):
    """The resource is already running (or opening, or closing): it cannot be started,
    opened or served a second time at once. Like trio's ``BusyResourceError``."""

    def __init__(self, message: str, *, state: ResourceState | None = None) -> None:
        super().__init__(message)
        self.state = state


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


class InvalidArgument(ConfigError):
    """An argument is not valid; ``field`` names it (``tenant``, ``root``, ``limit``...)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Unprocessable(EventwireError):
    """Raise from a handler when an event can never be processed: it is dead-lettered at
    once, with this message as the reason, instead of being retried."""


class DeadLetterError(EventwireError):
    """The dead-letter queue could not store, find or redrive an entry."""


class DeadLetterNotFound(DeadLetterError, NotFound):
    """No dead letter has this id (never stored, redriven, or purged)."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"no dead letter {seq}")
        self.seq = seq


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


# -- mapping foreign errors --------------------------------------------------------------------

_AUTHENTICATION = (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError)
_CONNECTION = (
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,  # and UnexpectedEOF
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ServerNotInPoolError,
    nats.errors.SecureConnRequiredError,
    nats.errors.SecureConnWantedError,
    nats.errors.SecureConnFailedError,
)
_UNAVAILABLE = (
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


# What nats-py raises: its own errors, and OSErrors (a connection reset under a request,
# a refused connect; TimeoutError is one too).
NATS_ERRORS = (nats.errors.Error, OSError)


def is_authentication_failure(exc: BaseException) -> bool:
    """Whether nats-py reports refused credentials (during a connect it raises a plain
    ``nats.errors.Error("nats: 'Authorization Violation'")``)."""
    if isinstance(exc, _AUTHENTICATION):
        return True
    text = str(exc).lower()
    return isinstance(exc, nats.errors.Error) and (
        "authorization violation" in text or "authentication" in text
    )


def describe(exc: BaseException) -> str:
    """A short account of a nats-py error, without its ``nats:`` prefix."""
    if isinstance(exc, nats.js.errors.APIError):  # some subclasses skip APIError.__init__
        code, err_code = getattr(exc, "code", None), getattr(exc, "err_code", None)
        what = getattr(exc, "description", None)
        if not what and isinstance(exc, nats.js.errors.ServiceUnavailableError):
            what = "JetStream did not answer (is it enabled for this account?)"
        codes = ", ".join(f"{k} {v}" for k, v in (("code", code), ("err_code", err_code)) if v)
        return f"{what or type(exc).__name__}" + (f" ({codes})" if codes else "")
    text = str(exc).removeprefix("nats: ").strip()
    if isinstance(exc, TimeoutError) and text in ("", "timeout"):
        return "timed out"
    return text or type(exc).__name__


def nats_error(exc: BaseException, what: str) -> EventwireError:
    """The eventwire error for a nats-py error (or an OSError) raised while doing ``what``;
    the caller raises it ``from exc``, keeping the cause."""
    message = f"{what}: {describe(exc)}"
    if is_authentication_failure(exc):
        return AuthenticationFailed(message)
    if isinstance(exc, TimeoutError):  # nats' TimeoutErrors are the builtin's subclasses
        return OperationTimeout(message)
    if isinstance(exc, (*_CONNECTION, OSError)):
        return ConnectionFailed(message)
    if isinstance(exc, _UNAVAILABLE):
        return ServerUnavailable(message)
    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFound(message)
    if isinstance(exc, nats.js.errors.APIError):
        fields = {key: getattr(exc, key, None) for key in ("code", "err_code", "description")}
        return ServerRejected(message, **fields)
    return TransportError(message)


@contextlib.contextmanager
def mapped_nats_errors(what: str) -> Iterator[None]:
    """Run a block whose nats-py errors (and OSErrors: timeouts, a lost connection) leave
    as :func:`nats_error`'s."""
    try:
        yield
    except EventwireError:
        raise  # already ours (some are TimeoutErrors too)
    except NATS_ERRORS as exc:
        raise nats_error(exc, what) from exc


def checked_name(field: str, value: str) -> str:
    """``value`` if it is a valid tenant/agent name, else :class:`InvalidArgument`
    naming ``field`` (security's :class:`~eventwire_security.InvalidName` is the cause)."""
    try:
        return check_name(field, value)
    except InvalidName as exc:
        raise InvalidArgument(
            f"{value!r} is not a valid name (1-64 of a-z A-Z 0-9 _ -, "
            "starting with a letter or digit)",
            field=field,
        ) from exc
