"""Unpadded base64url (RFC 7515 section 2), strict on decode."""

from __future__ import annotations

import base64
import binascii
import re

_ALPHABET = re.compile(rb"\A[A-Za-z0-9_-]*\Z")


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(data: bytes) -> bytes:
    """Decode unpadded base64url; raise ``ValueError`` on padding, bad characters or bad length."""
    if not _ALPHABET.match(data) or len(data) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        decoded = base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc
    if b64url_encode(decoded) != data:
        # Non-canonical trailing bits: two encodings would name the same bytes.
        raise ValueError("non-canonical base64url")
    return decoded
