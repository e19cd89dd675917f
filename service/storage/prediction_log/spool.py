"""A crash-safe local spool: checksummed records appended to segment files, fsynced in groups.

The prediction log writes every row here before the request is answered, and a background writer
drains the spool into the database. This module knows nothing about predictions: it stores and
returns opaque payloads, durably, in order.

Format (integers little-endian)
    directory  <root>/<owner>/        one per process; `LOCK` inside is flock'ed by its owner
    segment    <seq:010d>.seg         records back to back, no file header; a new segment starts
                                      when the active one passes `segment_bytes`
    record     u32 length | u32 CRC-32 (zlib) of the payload | payload (`length` bytes)

Replay rule: a segment is read record by record from offset 0. A record whose header or payload
is cut short, whose length is 0 or above MAX_RECORD_BYTES, or whose checksum does not match ends
the segment: nothing after it is interpreted ("torn tail"). A record is acknowledged only after
the fdatasync that covers it returned, so only records nobody was told about can be torn. A
length of 0 is refused because a crash can leave a zero-filled tail and CRC-32 of nothing is 0.

Why a file of our own and not an embedded store (SQLite in WAL mode): durability is one write()
and one fdatasync() shared by every request that arrived meanwhile (group commit), with no SQL
engine, page cache or lock manager on the request path; the format fits in five lines above; and
trimming is deleting whole segments. Prometheus' TSDB write-ahead log makes the same choices.

Ownership: a process holds an exclusive flock on its directory's LOCK file for as long as it
lives; the kernel drops it when the process dies, however it dies. Another process that obtains
the lock (non-blocking) knows the owner is gone and may adopt the directory: read it, hand the
records on, delete it. flock makes the adoption exclusive; the consumer (an idempotent insert)
makes a repeated adoption harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 16 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
READ_BUFFER_BYTES = 1024 * 1024
LOCK_FILE = "LOCK"
SEGMENT_SUFFIX = ".seg"


# --- record framing ----------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """One record as stored: header then payload."""
    if not 0 < len(payload) <= MAX_RECORD_BYTES:
        raise ValueError(f"a spool record holds 1 to {MAX_RECORD_BYTES} bytes, not {len(payload)}")
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Record:
    """A payload read back, with where it starts and where the next record starts."""

    offset: int
    end: int
    payload: bytes


def read_records(path: Path, *, start: int = 0, stop: int | None = None) -> Generator[Record, None, None]:
    """Records of a segment from `start`, in order, ending at the first torn one (or at `stop`).

    `stop` bounds the read to what is known to be durable (the owner's own active segment).
    """
    with path.open("rb", buffering=READ_BUFFER_BYTES) as handle:
        handle.seek(start)
        offset = start
        while stop is None or offset + HEADER.size <= stop:
            header = handle.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            length, checksum = HEADER.unpack(header)
            end = offset + HEADER.size + length
            if length == 0 or length > MAX_RECORD_BYTES or (stop is not None and end > stop):
                return
            payload = handle.read(length)
            if len(payload) < length or zlib.crc32(payload) != checksum:
                return
            yield Record(offset, end, payload)
            offset = end


def valid_length(path: Path) -> int:
    """Bytes of the segment up to the end of its last intact record."""
    end = 0
    for record in read_records(path):
        end = record.end
    return end


# --- segments and directories ----------------------------------------------------------------


@dataclass(frozen=True, order=True)
class SegmentId:
    """A segment: its directory's name (which starts with the creation time) and its sequence."""

    owner: str
    seq: int


def segment_name(seq: int) -> str:
    return f"{seq:010d}{SEGMENT_SUFFIX}"


def segment_seqs(directory: Path) -> list[int]:
    seqs = []
    for path in directory.glob(f"*{SEGMENT_SUFFIX}"):
        stem = path.name.removesuffix(SEGMENT_SUFFIX)
        if stem.isdigit():
            seqs.append(int(stem))
    return sorted(seqs)


class SpoolDirectory:
    """A directory of segments owned through an exclusive flock on its LOCK file."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.name = path.name
        self._lock_fd: int | None = lock_fd

    @classmethod
    def create(cls, root: Path) -> SpoolDirectory:
        """A new directory for this process, locked before it becomes visible under its name."""
        root.mkdir(parents=True, exist_ok=True)
        # The creation time first, so that names sort oldest first (adopted spools drain first).
        name = f"{time.time_ns() // 1_000_000:013d}-p{os.getpid()}-{uuid.uuid4().hex[:6]}"
        hidden = root / f".{name}"
        hidden.mkdir()
        lock_fd = os.open(hidden / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        final = root / name
        hidden.rename(final)
        _fsync_directory(root)
        return cls(final, lock_fd)

    @classmethod
    def try_adopt(cls, path: Path) -> SpoolDirectory | None:
        """Take over the directory of a process that is gone; None while its owner lives."""
        try:
            lock_fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # removed meanwhile by whoever adopted it
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            return None
        if not path.exists():  # adopted and removed between our open and our lock
            os.close(lock_fd)
            return None
        return cls(path, lock_fd)

    @staticmethod
    def siblings(root: Path, *, excluding: str | None = None) -> list[Path]:
        """Other processes' directories (live or not), oldest first (names start with the time)."""
        if not root.exists():
            return []
        found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(p for p in found if p.name != excluding)

    def segment_path(self, seq: int) -> Path:
        return self.path / segment_name(seq)

    def seqs(self) -> list[int]:
        return segment_seqs(self.path)

    def remove(self) -> None:
        """Delete the (drained) directory and give up the lock."""
        for seq in self.seqs():
            self.segment_path(seq).unlink(missing_ok=True)
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError as error:  # something unexpected inside: keep it, say so
            log.warning("spool directory not removed", extra={"path": str(self.path), "error": str(error)})
        self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def _fsync_directory(path: Path) -> None:
    """Make a created or renamed entry durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the appender: group commit ----------------------------------------------------------------


@dataclass(frozen=True)
class Appended:
    """Where a payload was stored; known once it is durable."""

    segment: SegmentId
    offset: int
    end: int


@dataclass
class _Pending:
    data: bytes
    tag: object
    future: Future[Appended]


@dataclass
class SyncStats:
    """Counts since start: appends, fdatasyncs, bytes made durable."""

    appends: int = 0
    syncs: int = 0
    bytes: int = 0
    sync_seconds: float = 0.0


class SpoolAppender:
    """Appends payloads to the owner's active segment; one fdatasync covers a whole group.

    `append` queues a framed record and returns a future; a single flusher thread takes every
    record queued meanwhile, writes them with one write() and one fdatasync(), then completes
    their futures. Under load many requests share one sync; alone, a request waits for one.
    `on_durable` is called (in the flusher thread) after each group's sync, before the reader may
    see the group and before any future of it completes, with each record's `tag` (the caller's,
    opaque here) and where it was stored: a record is accounted before it can be consumed.
    `on_readable` is called once the group is visible to the reader (to wake whoever drains it).
    """

    def __init__(
        self,
        directory: SpoolDirectory,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_durable: Callable[[Sequence[tuple[object, Appended]]], None] | None = None,
        on_readable: Callable[[], None] | None = None,
    ) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self._on_durable = on_durable
        self._on_readable = on_readable
        self._queue: list[_Pending] = []
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._closed = False
        self._seq = 0
        self._fd = -1
        self._size = 0
        self._durable: dict[int, int] = {}  # seq -> durable end offset, for the reader
        self.stats = SyncStats()
        self._open_segment(1)
        self._thread = threading.Thread(target=self._run, name="spool-flusher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Records waiting for their sync (the request-side queue depth)."""
        return len(self._queue)

    def segment_id(self, seq: int) -> SegmentId:
        return SegmentId(self._directory.name, seq)

    def durable_end(self, seq: int) -> int | None:
        """Bytes of segment `seq` known durable; None when the segment is sealed (read it all)."""
        with self._lock:
            if seq != self._seq:
                return None
            return self._durable.get(seq, 0)

    @property
    def active_seq(self) -> int:
        return self._seq

    def append(self, payload: bytes, tag: object = None) -> Future[Appended]:
        """Queue one record; the future completes once it is on disk (or fails with the error)."""
        pending = _Pending(frame(payload), tag, Future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the spool is closed")
            self._queue.append(pending)
            self._wakeup.notify()
        return pending.future

    def close(self) -> None:
        """Sync what is queued, stop the flusher and close the segment."""
        with self._lock:
            self._closed = True
            self._wakeup.notify()
        self._thread.join(timeout=30)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- flusher thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                group, self._queue = self._queue, []
                closing = self._closed
            if group:
                self._flush(group)
            if closing and not group:
                return

    def _flush(self, group: list[_Pending]) -> None:
        try:
            if self._size >= self._segment_bytes:
                self._rotate()
            data = b"".join(pending.data for pending in group)
            started = time.perf_counter()
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
            elapsed = time.perf_counter() - started
        except OSError as error:
            # Nobody is told these records are stored, so none may be read back: cut them off.
            log.error("spool write failed", extra={"error": str(error)})
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            for pending in group:
                pending.future.set_exception(error)
            return
        appended = []
        offset = self._size
        for pending in group:
            end = offset + len(pending.data)
            appended.append(Appended(self.segment_id(self._seq), offset, end))
            offset = end
        self._size = offset
        self.stats.appends += len(group)
        self.stats.syncs += 1
        self.stats.bytes += len(data)
        self.stats.sync_seconds += elapsed
        if self._on_durable is not None:
            try:
                self._on_durable(
                    [(pending.tag, where) for pending, where in zip(group, appended, strict=True)]
                )
            except Exception:  # the flusher must outlive any listener bug
                log.exception("spool listener failed")
        with self._lock:  # only now may the reader see the group (it was accounted above)
            self._durable[self._seq] = offset
        if self._on_readable is not None:
            try:
                self._on_readable()
            except Exception:
                log.exception("spool listener failed")
        for pending, where in zip(group, appended, strict=True):
            pending.future.set_result(where)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._open_segment(self._seq + 1)

    def _open_segment(self, seq: int) -> None:
        path = self._directory.segment_path(seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fsync_directory(self._directory.path)
        with self._lock:
            self._seq = seq
            self._size = 0
            self._durable = {seq: 0}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --- the reader: what is durable and not yet consumed ----------------------------------------


@dataclass
class _Source:
    """One directory the reader consumes, with its own cursor (next segment and offset).

    `appender` is set for the owner's own directory: its active segment is read only up to what
    is durable. Adopted directories are complete and read to their end.
    """

    directory: SpoolDirectory
    seqs: list[int]
    appender: SpoolAppender | None = None
    cursor: tuple[int, int] = (0, 0)

    @property
    def name(self) -> str:
        return self.directory.name

    def live_seqs(self) -> list[int]:
        if self.appender is None:
            return self.seqs
        first = self.seqs[0] if self.seqs else self.appender.active_seq
        return list(range(first, self.appender.active_seq + 1))


@dataclass
class Batch:
    """Records read in order, and per directory the cursor to commit once they are consumed.

    `finished` names adopted directories read to their very end by this batch.
    """

    records: list[tuple[SegmentId, Record]] = field(default_factory=list)
    cursors: dict[str, tuple[int, int]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)


class SpoolReader:
    """Reads durable records oldest first: adopted directories (oldest first), then the owner's.

    `read` returns records without consuming them; `commit` marks a batch consumed, deleting
    every segment it finished and removing adopted directories once they are read to the end.
    Only one thread (the log writer) reads; the lock guards against adoption meanwhile.
    """

    def __init__(self) -> None:
        self._sources: list[_Source] = []
        self._lock = threading.Lock()

    def add_own(self, directory: SpoolDirectory, appender: SpoolAppender) -> None:
        self._add(_Source(directory, [appender.active_seq], appender, (appender.active_seq, 0)))

    def add_adopted(self, directory: SpoolDirectory) -> None:
        seqs = directory.seqs()
        self._add(_Source(directory, seqs, None, (seqs[0] if seqs else 0, 0)))

    def _add(self, source: _Source) -> None:
        with self._lock:
            self._sources.append(source)
            self._sources.sort(key=lambda s: s.name)  # names start with the creation time

    def adopted_names(self) -> set[str]:
        with self._lock:
            return {s.name for s in self._sources if s.appender is None}

    def read(self, max_records: int) -> Batch:
        """Up to `max_records` durable records after the committed cursors."""
        batch = Batch()
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            if not self._read_source(source, batch, max_records):
                return batch
        return batch

    def _read_source(self, source: _Source, batch: Batch, max_records: int) -> bool:
        """Read into `batch`; False once it is full."""
        seq, offset = source.cursor
        seqs = [s for s in source.live_seqs() if s >= seq]
        for index, current in enumerate(seqs):
            start = offset if current == seq else 0
            stop = source.appender.durable_end(current) if source.appender is not None else None
            end = start
            with contextlib.closing(
                read_records(source.directory.segment_path(current), start=start, stop=stop)
            ) as records:
                for record in records:
                    batch.records.append((SegmentId(source.name, current), record))
                    end = record.end
                    if len(batch.records) >= max_records:
                        batch.cursors[source.name] = (current, end)
                        return False
            sealed = stop is None and index + 1 < len(seqs)
            batch.cursors[source.name] = (seqs[index + 1], 0) if sealed else (current, end)
        if source.appender is None:
            batch.finished.add(source.name)
        return True

    def peek(self) -> Record | None:
        """The first record not yet committed, without consuming it."""
        batch = self.read(1)
        return batch.records[0][1] if batch.records else None

    def commit(self, batch: Batch) -> None:
        """The batch is consumed: advance, and delete what no record is needed from any more."""
        with self._lock:
            keep = []
            for source in self._sources:
                if source.name in batch.cursors:
                    source.cursor = batch.cursors[source.name]
                    self._trim(source)
                if source.name in batch.finished:
                    source.directory.remove()
                    continue
                keep.append(source)
            self._sources = keep

    @staticmethod
    def _trim(source: _Source) -> None:
        """Delete the segments before the cursor's: every record in them is consumed."""
        cursor_seq = source.cursor[0]
        for seq in source.live_seqs():
            if seq < cursor_seq:
                source.directory.segment_path(seq).unlink(missing_ok=True)
        source.seqs = [seq for seq in source.live_seqs() if seq >= cursor_seq]
