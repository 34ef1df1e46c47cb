"""Random identifiers (version 4 UUIDs) without a system call each.

``uuid.uuid4()`` reads 16 bytes with ``os.urandom``: one ``getrandom`` system call per id, and
a routed interaction makes about eight ids (the interaction, its routing request, its outbound
messages, claim tokens). The bytes here come from the same source, read 4 KiB at a time. A
forked child drops what its parent had read, so the two never hand out the same id.
"""

from __future__ import annotations

import os
import threading
import uuid

__all__ = ["random_hex", "random_uuid"]

_BATCH = 4096


class _RandomBytes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drop()
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._buffer = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._at + count > len(self._buffer):
                self._buffer = os.urandom(_BATCH)
                self._at = 0
            start = self._at
            self._at = start + count
            return self._buffer[start : start + count]


_SOURCE = _RandomBytes()


def random_uuid() -> uuid.UUID:
    """A random (version 4) UUID, as ``uuid.uuid4()`` gives."""
    return uuid.UUID(bytes=_SOURCE.take(16), version=4)


def random_hex() -> str:
    """32 random hex digits: a version 4 UUID's ``hex``."""
    return random_uuid().hex
