"""Strict claims parsing: every payload is validly signed by its owner; only parsing refuses."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest

from eventwire_security import (
    Identity,
    Keyring,
    MalformedClaims,
    OwnerMismatch,
    verify_envelope,
)
from eventwire_security.hazmat import (
    sign_payload,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError

B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
OWNER = b'"source":"acme/alice","tenant":"acme"'


def obj(*members: bytes) -> bytes:
    """A claims object naming alice, with extra raw JSON members."""
    return b"{" + b",".join((OWNER, *members)) + b"}"


def nested(depth: int) -> bytes:
    """``{"d": [[...]]}`` with ``depth`` nested arrays under the claims object."""
    return obj(b'"d":' + b"[" * depth + b"]" * depth)


@pytest.fixture
def parse(alice: Identity, keyring: Keyring) -> Callable[..., dict[str, Any]]:
    def run(payload: bytes, **kw: Any) -> dict[str, Any]:
        return verify_envelope(sign_payload(payload, alice), keyring, **kw).claims

    return run


@pytest.fixture
def malformed(
    alice: Identity, keyring: Keyring, refused: Callable[..., EnvelopeError]
) -> Callable[..., EnvelopeError]:
    def run(payload: bytes, **kw: Any) -> EnvelopeError:
        exc = refused(sign_payload(payload, alice), keyring, MalformedClaims, **kw)
        assert exc.kid == alice.kid
        return exc

    return run


def test_baseline_is_accepted(parse: Callable[..., dict[str, Any]]) -> None:
    assert parse(obj(b'"n":1')) == {"source": "acme/alice", "tenant": "acme", "n": 1}
    # Insignificant whitespace is JSON (RFC 8259), and it is inside the signed bytes.
    assert parse(b' \n{ "tenant" : "acme" ,\t"source":"acme/alice" }\r\n') == {
        "tenant": "acme",
        "source": "acme/alice",
    }


@pytest.mark.parametrize(
    "payload",
    [
        obj(b'"a":1', b'"a":2'),
        obj(b'"a":1', b'"a":1'),
        obj(b'"source":"acme/alice"'),
        b'{"source":"acme/bob",' + OWNER + b"}",
        obj(b'"d":{"x":1,"x":2}'),
        obj(b'"d":[{"k":0},{"k":1,"k":2}]'),
        obj(b'"a":1', b'"\\u0061":2'),
        obj(b'"\xc3\xa9":1', b'"\\u00e9":2'),
    ],
    ids=[
        "same-key",
        "same-key-same-value",
        "owner-repeated",
        "owner-shadowed",
        "nested",
        "in-array",
        "escaped-ascii",
        "escaped-non-ascii",
    ],
)
def test_duplicate_keys(malformed: Callable[..., EnvelopeError], payload: bytes) -> None:
    assert "duplicate key" in str(malformed(payload))


@pytest.mark.parametrize(
    "number",
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1E+999", b"[1e309]"],
)
def test_non_finite_numbers(malformed: Callable[..., EnvelopeError], number: bytes) -> None:
    malformed(obj(b'"x":' + number))


def test_finite_edge_numbers_are_accepted(parse: Callable[..., dict[str, Any]]) -> None:
    claims = parse(obj(b'"big":1.7976931348623157e308', b'"tiny":5e-324', b'"under":1e-400'))
    assert claims["big"] == 1.7976931348623157e308
    assert claims["tiny"] == 5e-324
    assert claims["under"] == 0.0
    assert parse(obj(b'"i":' + b"9" * 4300))["i"] == int("9" * 4300)


def test_huge_integers_are_refused(malformed: Callable[..., EnvelopeError]) -> None:
    malformed(obj(b'"i":' + b"9" * 5000))


def test_depth_limit_boundary(
    parse: Callable[..., dict[str, Any]], malformed: Callable[..., EnvelopeError]
) -> None:
    # The claims object is level 1; with the default max_depth=32, 31 more levels are allowed.
    assert parse(nested(31))["d"] is not None
    assert "nesting deeper than 32" in str(malformed(nested(32)))
    assert parse(nested(2), max_depth=3)["d"] == [[]]
    malformed(nested(3), max_depth=3)
    malformed(obj(b'"d":' + b'{"a":' * 40 + b"1" + b"}" * 40))
    malformed(b"{}", max_depth=0)


@pytest.mark.parametrize("depth", [33, 500, 5_000, 100_000])
def test_deep_nesting_is_malformed_not_recursion_error(
    malformed: Callable[..., EnvelopeError], depth: int
) -> None:
    malformed(nested(depth))
    malformed(b"[" * depth + b"]" * depth)
    malformed(obj(b'"d":' + b'{"a":' * depth + b"0" + b"}" * depth))


def test_unbalanced_deep_nesting(malformed: Callable[..., EnvelopeError]) -> None:
    malformed(obj(b'"d":' + b"[" * 100_000))
    malformed(b"[" * 200_000)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # UTF-8-encoded surrogate
        b"\xe2\x82",  # truncated sequence
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\x80",  # lone continuation byte
    ],
)
def test_invalid_utf8(malformed: Callable[..., EnvelopeError], raw: bytes) -> None:
    assert "invalid UTF-8" in str(malformed(obj(b'"s":"' + raw + b'"')))
    malformed(obj(b'"' + raw + b'":1'))


def test_utf8_bom_is_refused(malformed: Callable[..., EnvelopeError]) -> None:
    malformed(b"\xef\xbb\xbf" + obj())


@pytest.mark.parametrize(
    "escape",
    [
        *(b"\\ud800", b"\\udbff", b"\\udc00", b"\\udfff", b"\\uD800", b"\\ude00\\ud83d"),
        *(b"x\\ud83dx", b"\\ud83d\\ud83d", b"\\ud83d\\u0041"),
    ],
)
def test_lone_surrogates(malformed: Callable[..., EnvelopeError], escape: bytes) -> None:
    assert "lone surrogate" in str(malformed(obj(b'"s":"' + escape + b'"')))
    malformed(obj(b'"' + escape + b'":1'))
    malformed(obj(b'"d":[{"k":["' + escape + b'"]}]'))


def test_surrogate_pairs_and_look_alikes_are_accepted(parse: Callable[..., dict[str, Any]]) -> None:
    assert parse(obj(b'"s":"\\ud83d\\ude00"'))["s"] == "\U0001f600"
    assert parse(obj(b'"\\uD83D\\uDE00":1'))["\U0001f600"] == 1
    assert parse(obj(b'"s":"\\\\ud800"'))["s"] == "\\ud800"  # an escaped backslash, not an escape
    assert parse(obj(b'"s":"\xf0\x9f\x98\x80"'))["s"] == "\U0001f600"


@pytest.mark.parametrize(
    "payload",
    [b"[]", b'["acme/alice"]', b'"acme/alice"', b"42", b"1.5", b"true", b"null"],
)
def test_top_level_must_be_an_object(
    malformed: Callable[..., EnvelopeError], payload: bytes
) -> None:
    assert str(malformed(payload)).endswith("claims must be a JSON object")


@pytest.mark.parametrize(
    "payload",
    [
        obj() + b"x",
        obj() + b"{}",
        obj() + obj(),
        obj() + b",",
        obj() + b"\x00",
        obj()[:-1],
        b"",
        b" ",
        b"{",
        b"{'source':'acme/alice'}",
        obj(b'"a":1,'),
        obj(b'"a":[1,]'),
        obj(b"// c\n" + b'"a":1'),
        obj(b'"a":01'),
        obj(b'"a":.5'),
        obj(b'"a":+1'),
        obj(b'"a":0x10'),
        obj(b'"a":"tab\there"'),
        obj(b'"a":"nl\nhere"'),
        obj(b'"a":"\\x41"'),
        obj(b'"a":"\\u12"'),
        obj(b"a:1"),
        obj(b'"a":True'),
        obj(b'"a":undefined'),
    ],
)
def test_not_json(malformed: Callable[..., EnvelopeError], payload: bytes) -> None:
    malformed(payload)


def test_payload_base64_problems_inside_a_valid_signature(
    alice: Identity,
    keyring: Keyring,
    forge: Callable[..., bytes],
    refused: Callable[..., EnvelopeError],
) -> None:
    # Only the key holder can produce these: the payload part is covered by the signature, so
    # it is decoded after verification and refused as malformed claims.
    encoded = base64.urlsafe_b64encode(obj(b'"p":12')).rstrip(b"=")
    assert len(encoded) % 4 == 2  # the last character carries 4 discarded bits
    standard = base64.standard_b64encode(obj(b'"p":"???>>>"'))
    assert b"/" in standard
    assert b"=" in standard
    last = B64URL.index(encoded[-1])
    for bad in (
        encoded + b"=" * (-len(encoded) % 4),
        standard,
        encoded[:-1] + b"*",
        encoded + b"A",
        encoded[:-1] + bytes([B64URL[last ^ 0x01]]),  # same bytes, non-canonical text
        encoded + b"\n",
    ):
        refused(forge(alice, payload_b64=bad), keyring, MalformedClaims)


def test_owner_checked_after_parsing(
    alice: Identity, keyring: Keyring, refused: Callable[..., EnvelopeError]
) -> None:
    for payload in (
        b"{}",
        b'{"source":"acme/alice"}',
        b'{"tenant":"acme"}',
        b'{"source":"acme/alice","tenant":"evil"}',
        b'{"source":"evil/alice","tenant":"acme"}',
        b'{"source":["acme/alice"],"tenant":"acme"}',
        b'{"source":"acme/alice","tenant":null}',
    ):
        exc = refused(sign_payload(payload, alice), keyring, OwnerMismatch)
        assert exc.kid == alice.kid
