"""Every exception nats-py can raise becomes an EventwireError, with the original as its cause.

Like httpx's test of its transport's exception map: the classes are found by introspecting
``nats.errors`` and ``nats.js.errors``, so a class that a new nats-py release adds fails
here until it is given a mapping on purpose. Each is built as nats-py builds it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import pytest

import eventwire
from eventwire import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    EventwireError,
    InvalidArgument,
    NotFound,
    OperationTimeout,
    RequestTimeout,
    ServerRejected,
    ServerUnavailable,
    TransportError,
)
from eventwire._connection import redact_url
from eventwire._errors import checked_name, mapped_nats_errors, nats_error
from eventwire_security import InvalidName, SecurityError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

E, JS = nats.errors, nats.js.errors

# What each nats-py exception becomes, by module and class name.
DECIDED: dict[type[EventwireError], dict[str, str]] = {
    ConnectionFailed: {
        "nats.errors": "NoServersError ConnectionClosedError StaleConnectionError UnexpectedEOF"
        " ConnectionReconnectingError ConnectionDrainingError OutboundBufferLimitError"
        " ServerNotInPoolError SecureConnRequiredError SecureConnWantedError"
        " SecureConnFailedError",
    },
    AuthenticationFailed: {"nats.errors": "AuthorizationError InvalidUserCredentialsError"},
    OperationTimeout: {
        "nats.errors": "TimeoutError FlushTimeoutError DrainTimeoutError",
        "nats.js.errors": "FetchTimeoutError",
    },
    ServerUnavailable: {
        "nats.errors": "NoRespondersError",
        "nats.js.errors": "ServiceUnavailableError NoStreamResponseError",
    },
    NotFound: {
        "nats.js.errors": "NotFoundError BucketNotFoundError KeyNotFoundError KeyDeletedError"
        " ObjectNotFoundError ObjectDeletedError",
    },
    ServerRejected: {
        "nats.js.errors": "APIError ServerError BadRequestError ConsumerInvalidResetError"
        " BadBucketError KeyValueError KeyWrongLastSequenceError NoKeysError"
        " KeyHistoryTooLargeError",
    },
    TransportError: {  # refused by the client itself, or no closer match
        "nats.errors": "Error BadSubscriptionError BadSubjectError BadHeaderError"
        " SlowConsumerError BadTimeoutError JsonParseError MaxPayloadError"
        " InvalidCallbackTypeError ProtocolError NotJSMessageError MsgAlreadyAckdError",
        "nats.js.errors": "Error TooManyStalledMsgsError ConsumerSequenceMismatchError"
        " InvalidKeyError InvalidBucketNameError InvalidObjectNameError BadObjectMetaError"
        " LinkIsABucketError DigestMismatchError ObjectAlreadyExists"
        " KeyValueLimitMarkerTTLNotSupportedError",
    },
}
EXPECTED = {
    (module, name): target
    for target, modules in DECIDED.items()
    for module, names in modules.items()
    for name in names.split()
}

NO_SUB: Any = None  # nats-py passes the Subscription; the mapping never looks at it
# Constructors as nats-py calls them, for the classes that take arguments.
BUILD: dict[type[BaseException], Callable[[], BaseException]] = {
    E.BadHeaderError: lambda: E.BadHeaderError("Nats-Msg-Id\r\n"),
    E.SlowConsumerError: lambda: E.SlowConsumerError(subject="s", reply="", sid=1, sub=NO_SUB),
    E.MsgAlreadyAckdError: lambda: E.MsgAlreadyAckdError(msg=None),
    E.Error: lambda: E.Error("nats: unknown"),
    JS.Error: lambda: JS.Error(description="no response"),
    JS.ConsumerSequenceMismatchError: lambda: JS.ConsumerSequenceMismatchError(
        stream_resume_sequence=5, consumer_sequence=4, last_consumer_sequence=2
    ),
    JS.KeyNotFoundError: lambda: JS.KeyNotFoundError(entry=None, op="DEL"),
    JS.KeyDeletedError: lambda: JS.KeyDeletedError(entry=None, op="PURGE"),
    JS.KeyWrongLastSequenceError: lambda: JS.KeyWrongLastSequenceError(
        description="wrong last sequence: 3"
    ),
}


def exported_errors(module: ModuleType) -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
    ]


ALL = exported_errors(nats.errors) + exported_errors(nats.js.errors)


def build(cls: type[BaseException]) -> BaseException:
    """An instance as nats-py raises it (APIErrors carry the server's fields)."""
    if cls in BUILD:
        return BUILD[cls]()
    if issubclass(cls, JS.APIError):
        return cls(code=400, err_code=10003, description="bad request", stream="s", seq=1)
    return cls()


def test_every_nats_exception_has_a_mapping() -> None:
    found = {(cls.__module__, cls.__name__) for cls in ALL}
    assert len(found) == len(ALL) > 50
    assert found == set(EXPECTED), "a nats-py exception without a decided mapping"


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_a_nats_exception_becomes_its_eventwire_error_with_the_cause_kept(
    cls: type[BaseException],
) -> None:
    original = build(cls)
    with pytest.raises(EventwireError) as caught, mapped_nats_errors("reading the stream"):
        raise original
    expected = EXPECTED[(cls.__module__, cls.__name__)]
    assert type(caught.value) is expected
    assert caught.value.__cause__ is original
    assert str(caught.value).startswith("reading the stream: ")
    assert not isinstance(caught.value, nats.errors.Error)  # nothing foreign to catch
    assert type(nats_error(original, "x")) is expected  # the function, without the block


def test_an_api_error_keeps_the_servers_fields() -> None:
    original = JS.BadRequestError(code=400, err_code=10058, description="stream name in use")
    mapped = nats_error(original, "creating ew-events")
    assert isinstance(mapped, ServerRejected)
    assert (mapped.code, mapped.err_code, mapped.description) == (400, 10058, "stream name in use")
    assert str(mapped) == "creating ew-events: stream name in use (code 400, err_code 10058)"


def test_the_connect_time_authorization_violation_is_an_authentication_failure() -> None:
    # During a connect nats-py raises a plain Error with the server's -ERR text.
    mapped = nats_error(E.Error("nats: 'Authorization Violation'"), "connecting")
    assert type(mapped) is AuthenticationFailed
    assert str(mapped) == "connecting: 'Authorization Violation'"


def test_a_bare_timeout_is_an_operation_timeout_and_ours_pass_unchanged() -> None:
    with pytest.raises(OperationTimeout, match="purging: timed out"), mapped_nats_errors("purging"):
        raise TimeoutError
    ours = RequestTimeout("no reply in 5s", target="bot")  # a TimeoutError too
    with pytest.raises(RequestTimeout) as caught, mapped_nats_errors("asking"):
        raise ours
    assert caught.value is ours


@pytest.mark.parametrize(
    "original",
    [ConnectionResetError(104, "Connection reset by peer"), ConnectionRefusedError(111, "x")],
)
def test_an_oserror_under_a_request_is_a_connection_failure(original: OSError) -> None:
    # nats-py lets the socket's error through when the connection drops mid-request.
    with pytest.raises(ConnectionFailed) as caught, mapped_nats_errors("listing ew-dlq"):
        raise original
    assert caught.value.__cause__ is original


def test_other_exceptions_pass_unchanged() -> None:
    with pytest.raises(KeyError), mapped_nats_errors("x"):
        raise KeyError("not a nats error")


def test_every_exported_exception_is_an_eventwire_error() -> None:
    exported = [getattr(eventwire, name) for name in eventwire.__all__]
    errors = [obj for obj in exported if inspect.isclass(obj) and issubclass(obj, Exception)]
    assert len(errors) > 30
    assert [e for e in errors if not issubclass(e, EventwireError)] == []


def test_a_bad_name_is_an_invalid_argument_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        checked_name("tenant", "bad tenant")
    assert caught.value.field == "tenant"
    assert isinstance(caught.value, ConfigError | ValueError)
    assert not isinstance(caught.value, SecurityError)
    assert isinstance(caught.value.__cause__, InvalidName)
    assert str(caught.value).startswith("tenant: 'bad tenant' is not a valid name")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://tokenvalue@host:4222", "nats://***@host:4222"),
        ("tls://a:b@h1:1,nats://c:d@h2:2", "tls://***@h1:1,nats://***@h2:2"),
        ("alice:pw@127.0.0.1:4222", "***@127.0.0.1:4222"),
        ("nats://u:p@ss@host:1", "nats://***@host:1"),  # an '@' inside the password
        ("ws://u:p@host:8080/path@x", "ws://***@host:8080/path@x"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_credentials_never_leave_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_connection_failed_carries_the_redacted_url() -> None:
    error: Any = ConnectionFailed("cannot connect", url="nats://***@h:1")
    assert (error.url, isinstance(error, TransportError)) == ("nats://***@h:1", True)
