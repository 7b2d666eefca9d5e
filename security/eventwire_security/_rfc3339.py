"""RFC 3339 UTC timestamps, written one way (``...Z``) and read strictly."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_PATTERN = re.compile(
    r"\A([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z\Z"
)


def aware(when: datetime, what: str = "time") -> datetime:
    """``when`` if it is a timezone-aware datetime, else ``ValueError``/``TypeError``."""
    if not isinstance(when, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(when).__name__}")
    if when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return when


def format_utc(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` for an aware datetime (microseconds only if set)."""
    try:
        utc = aware(when).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time out of range: {when!r}") from None
    return utc.replace(tzinfo=None).isoformat() + "Z"


def parse_utc(text: object) -> datetime:
    """The aware UTC datetime of a ``...Z`` timestamp; ``ValueError`` on anything else."""
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.ffffff]Z): {text!r}")
    *fields, fraction = match.groups()
    year, month, day, hour, minute, second = (int(field) for field in fields)
    micros = int((fraction or "").ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"not a valid time {text!r}: {exc}") from None
