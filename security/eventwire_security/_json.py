"""Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no lone surrogates, bounded depth."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pydantic_core

_LONE_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # json.loads turns out-of-range literals such as 1e400 into inf: refuse them like Infinity.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float
)


def _check(value: Any, max_depth: int, check_surrogates: bool) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = list(item.values())
            if check_surrogates:
                children.extend(item.keys())
        elif isinstance(item, list):
            children = item
        else:
            if check_surrogates and isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("lone surrogate in string") from None
            continue
        if depth >= max_depth:
            raise ValueError(f"nesting deeper than {max_depth}")
        stack.extend((child, depth + 1) for child in children)


def _canonical(data: bytes) -> Any:
    """The value of ``data`` if ``data`` is exactly its canonical serialization, else None.

    Exactness rules out duplicate keys (a dropped member would shorten the output), NaN,
    Infinity and out-of-range numbers, bad escapes and invalid UTF-8, without the slower
    hooks of the standard library parser. eventwire's signer writes this canonical form.
    """
    try:
        value = pydantic_core.from_json(data, allow_inf_nan=False, cache_strings=False)
        return value if pydantic_core.to_json(value) == data else None
    except ValueError:
        return None


def strict_loads(data: bytes, *, max_depth: int) -> Any:
    """Parse ``data`` as strict JSON or raise ``ValueError`` saying why."""
    if isinstance(value := _canonical(data), dict | list) and (
        data.count(b"{") + data.count(b"[") <= max_depth
    ):
        return value
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at {exc.pos}") from None
    check_surrogates = bool(_LONE_SURROGATE_HINT.search(data))
    # Depth cannot exceed the number of opening brackets: skip the walk when that is small.
    if check_surrogates or data.count(b"{") + data.count(b"[") > max_depth:
        _check(value, max_depth, check_surrogates)
    return value
