"""Feature epochs: how every process of one DATA_DIR hears that a symbol's features changed.

Each worker (`serve --workers N`) keeps its own L1. An ingest through one worker, or through
`stockpred import` in a process of its own, invalidates that process's L1 and Redis; without
more, the other workers would go on serving the previous bar's features until their L1 TTL runs
out. So invalidation also bumps a counter for the symbol in a small file under DATA_DIR that
every process maps into memory, and an L1 entry is used only while its symbol's counter still
holds the value noted when the entry was stored.

The file is SLOTS little-endian 64-bit counters; a symbol's slot is its CRC-32 modulo SLOTS (two
symbols sharing a slot only cost each other an extra recomputation). Reading is one load from the
shared mapping: no system call on the L1 hit path. Bumping takes an exclusive `flock` on the file
around read-modify-write, so concurrent bumps from several processes are never lost.

Hand-written because no library keeps a counter table shared between processes without a server
(Redis is optional and may be down, which is exactly when L1 matters most).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

SLOTS = 4096
_COUNTER = struct.Struct("<Q")
SIZE = SLOTS * _COUNTER.size


def slot_of(symbol: str) -> int:
    return zlib.crc32(symbol.encode()) % SLOTS


class FeatureEpochs:
    """A counter per symbol slot; shared between processes when backed by a file."""

    def __init__(self, path: Path | None = None) -> None:
        """`path` None keeps the counters in this process only (tests, one-off tools)."""
        self._lock = threading.Lock()
        self._fd = -1
        if path is None:
            self._map: mmap.mmap | bytearray = bytearray(SIZE)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        with self._locked():
            if os.fstat(self._fd).st_size < SIZE:
                os.ftruncate(self._fd, SIZE)  # zero-filled: every counter starts at 0
        self._map = mmap.mmap(self._fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def current(self, symbol: str) -> int:
        """The symbol's counter now (note it before reading or computing the features)."""
        return int(_COUNTER.unpack_from(self._map, slot_of(symbol) * _COUNTER.size)[0])

    def bump(self, symbols: Iterable[str]) -> None:
        """Mark the symbols' features changed, for this process and every other one."""
        slots = sorted({slot_of(symbol) for symbol in symbols})
        with self._lock, self._locked():
            for slot in slots:
                offset = slot * _COUNTER.size
                (value,) = _COUNTER.unpack_from(self._map, offset)
                _COUNTER.pack_into(self._map, offset, value + 1)

    def close(self) -> None:
        """Let go of the file; later calls see private zeros (every L1 entry then misses once)."""
        shared, self._map = self._map, bytearray(SIZE)
        if isinstance(shared, mmap.mmap):
            with contextlib.suppress(BufferError):  # a reader mid-call: the mapping goes with the process
                shared.close()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _locked(self) -> _FileLock:
        return _FileLock(self._fd)


class _FileLock:
    """An exclusive flock for the duration of a `with` (nothing to lock without a file)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
