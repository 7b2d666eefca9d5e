"""Unpadded base64url (RFC 7515 section 2), strict on decode."""

from __future__ import annotations

import base64
import binascii

_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {char: index for index, char in enumerate(_ALPHABET)}
# The unused low bits of the last character must be zero, else two encodings name one value.
_UNUSED_BITS_MASK = {2: 0b1111, 3: 0b11}


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(data: bytes) -> bytes:
    """Decode unpadded, canonical base64url; ``ValueError`` on anything else."""
    remainder = len(data) % 4
    if remainder == 1 or b"+" in data or b"/" in data or b"=" in data:
        raise ValueError("not unpadded base64url")
    mask = _UNUSED_BITS_MASK.get(remainder)
    if mask is not None and _VALUE.get(data[-1], 0) & mask:
        raise ValueError("non-canonical base64url")
    try:
        return binascii.a2b_base64(
            data.translate(_TO_STANDARD) + b"=" * (-remainder % 4), strict_mode=True
        )
    except binascii.Error as exc:
        raise ValueError(f"not unpadded base64url: {exc}") from None
