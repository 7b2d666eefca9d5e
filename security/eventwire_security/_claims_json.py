"""Claims as compact UTF-8 JSON, written once and exactly as JSON reads them back."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pydantic_core

from ._errors import MalformedClaims

if TYPE_CHECKING:
    from collections.abc import Mapping

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    """Serialize claims as compact UTF-8 JSON; NaN, Infinity and non-JSON types are refused."""
    if _plain(claims):  # only JSON's own types: pydantic_core writes them as JSON does
        return pydantic_core.to_json(claims)
    try:
        data = pydantic_core.to_json(claims)
    except (pydantic_core.PydanticSerializationError, ValueError) as exc:
        raise MalformedClaims(f"claims are not JSON: {exc}") from exc
    # pydantic_core also writes NaN, bytes, sets, dates...: if what it wrote does not read
    # back as the very same value, let the standard encoder decide (it refuses those).
    if b"NaN" in data or b"Infinity" in data or pydantic_core.from_json(data) != claims:
        data = _strict_encode(claims)
    return data


_SCALARS = (bool, int, type(None))


def _plain(value: Mapping[str, Any]) -> bool:
    """Whether ``value`` holds only dicts with str keys, lists, finite floats, ints, bools,
    None and strings without lone surrogates (which read back as exactly themselves)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif kind is dict:
            try:
                keys = "".join(item)  # TypeError unless every key is a str
            except TypeError:
                return False
            stack.append(keys)
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind not in _SCALARS:
            return False
    return True


def _strict_encode(claims: Mapping[str, Any]) -> bytes:
    try:
        return _ENCODER.encode(claims).encode()
    except (ValueError, TypeError) as exc:
        raise MalformedClaims(f"claims are not JSON: {exc}") from exc
