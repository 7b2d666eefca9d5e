"""UUIDv7 (RFC 9562): time-ordered, 74 random bits.

Random bytes come from ``os.urandom`` in 4 KiB reads: one system call per ~400 ids.
"""

from __future__ import annotations

import os
import threading
import time

_BUFFER_BYTES = 4096
_ID_RANDOM_BYTES = 10


class _RandomBuffer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = b""
        self._offset = 0

    def take(self, count: int) -> int:
        with self._lock:
            if self._offset + count > len(self._data):
                self._data = os.urandom(_BUFFER_BYTES)
                self._offset = 0
            start = self._offset
            self._offset += count
            return int.from_bytes(self._data[start : start + count], "big")


_random = _RandomBuffer()


def uuid7() -> str:
    millis = time.time_ns() // 1_000_000
    rand = _random.take(_ID_RANDOM_BYTES)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
