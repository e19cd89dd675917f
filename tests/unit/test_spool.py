"""The spool's file format, group commit, replay, torn tails, rotation, trimming and adoption."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from service.storage.prediction_log.spool import (
    HEADER,
    SpoolAppender,
    SpoolDirectory,
    SpoolReader,
    frame,
    read_records,
    valid_length,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def payloads(count: int, prefix: str = "row") -> list[bytes]:
    return [f'{{"{prefix}": {i}}}'.encode() for i in range(count)]


@pytest.fixture
def directory(tmp_path: Path) -> SpoolDirectory:
    return SpoolDirectory.create(tmp_path / "spool")


def append_all(appender: SpoolAppender, items: list[bytes]) -> None:
    for future in [appender.append(item) for item in items]:
        future.result(timeout=10)


def read_back(directory: SpoolDirectory) -> list[bytes]:
    return [r.payload for seq in directory.seqs() for r in read_records(directory.segment_path(seq))]


# --- format ------------------------------------------------------------------------------------


def test_records_come_back_in_order_with_their_offsets(directory: SpoolDirectory) -> None:
    appender = SpoolAppender(directory)
    items = payloads(50)
    futures = [appender.append(item) for item in items]
    where = [future.result(timeout=10) for future in futures]
    appender.close()
    records = list(read_records(directory.segment_path(1)))
    assert [r.payload for r in records] == items
    assert [(r.offset, r.end) for r in records] == [(w.offset, w.end) for w in where]
    assert records[0].offset == 0
    assert all(a.end == b.offset for a, b in itertools.pairwise(records))


@pytest.mark.parametrize(
    ("damage", "survivors"),
    [
        ("cut the last payload short", 2),
        ("cut inside the last header", 3),
        ("zero-filled tail", 3),
        ("flip a byte of the last payload", 2),
        ("length beyond the file", 3),
    ],
)
def test_a_torn_tail_is_detected_and_never_misread(
    directory: SpoolDirectory, damage: str, survivors: int
) -> None:
    appender = SpoolAppender(directory)
    append_all(appender, payloads(3))
    appender.close()
    path = directory.segment_path(1)
    data = bytearray(path.read_bytes())
    if damage == "cut the last payload short":
        data = data[:-3]
    elif damage == "cut inside the last header":
        data += frame(b"fourth")[: HEADER.size - 2]
    elif damage == "zero-filled tail":
        data += bytes(4096)
    elif damage == "flip a byte of the last payload":
        data[-2] ^= 0xFF
    elif damage == "length beyond the file":
        data += HEADER.pack(1_000, 0) + b"xx"
    path.write_bytes(bytes(data))
    assert [r.payload for r in read_records(path)] == payloads(3)[:survivors]
    intact = sum(len(frame(p)) for p in payloads(3)[:survivors])
    assert valid_length(path) == intact


def test_an_empty_or_huge_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="1 to"):
        frame(b"")


# --- group commit ------------------------------------------------------------------------------


def test_concurrent_appends_share_fsyncs(directory: SpoolDirectory) -> None:
    appender = SpoolAppender(directory)
    items = payloads(400)
    start = threading.Barrier(8)

    def worker(part: list[bytes]) -> None:
        start.wait()
        append_all(appender, part)

    threads = [threading.Thread(target=worker, args=(items[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    appender.close()
    assert appender.stats.appends == 400
    assert appender.stats.syncs < appender.stats.appends  # one fdatasync served several records
    assert sorted(read_back(directory)) == sorted(items)


def test_durable_listener_runs_before_the_waiter_is_told(directory: SpoolDirectory) -> None:
    seen: list[object] = []
    appender = SpoolAppender(directory, on_durable=lambda done: seen.extend(tag for tag, _ in done))
    future = appender.append(b"x", tag="tag-1")
    future.result(timeout=10)
    assert seen == ["tag-1"]
    appender.close()


def test_a_group_is_accounted_before_the_reader_can_see_it(directory: SpoolDirectory) -> None:
    """Seen by the reader first, a record could be consumed before it is accounted (its index
    entry would then outlive it for good): the listener runs while the reader still sees nothing."""
    visible_when_accounted: list[int] = []
    visible_when_readable: list[int] = []

    def visible() -> int:
        return len(reader.read(10).records)

    appender = SpoolAppender(
        directory,
        on_durable=lambda _done: visible_when_accounted.append(visible()),
        on_readable=lambda: visible_when_readable.append(visible()),
    )
    reader = SpoolReader()
    reader.add_own(directory, appender)
    appender.append(b"x").result(timeout=10)
    appender.close()
    assert (visible_when_accounted, visible_when_readable) == ([0], [1])


def test_a_closed_appender_refuses_records(directory: SpoolDirectory) -> None:
    appender = SpoolAppender(directory)
    append_all(appender, payloads(2))
    appender.close()
    with pytest.raises(RuntimeError, match="closed"):
        appender.append(b"late")
    assert read_back(directory) == payloads(2)


# --- rotation, reading and trimming ------------------------------------------------------------


def test_segments_rotate_and_committed_ones_are_deleted(directory: SpoolDirectory) -> None:
    appender = SpoolAppender(directory, segment_bytes=200)
    reader = SpoolReader()
    reader.add_own(directory, appender)
    items = payloads(60)
    for item in items:  # one at a time: each group is one record, so rotation happens often
        appender.append(item).result(timeout=10)
    assert len(directory.seqs()) > 3
    consumed: list[bytes] = []
    while True:
        batch = reader.read(7)
        if not batch.records:
            break
        consumed += [record.payload for _, record in batch.records]
        reader.commit(batch)
    assert consumed == items
    assert directory.seqs() == [appender.active_seq], "every finished segment is trimmed"
    appender.close()


def test_the_reader_stops_at_what_is_durable(directory: SpoolDirectory) -> None:
    appender = SpoolAppender(directory)
    reader = SpoolReader()
    reader.add_own(directory, appender)
    append_all(appender, payloads(3))
    # Bytes beyond the durable end (a write in progress) are not read.
    with directory.segment_path(1).open("ab") as handle:
        handle.write(frame(b"not yet synced"))
    batch = reader.read(10)
    assert [r.payload for _, r in batch.records] == payloads(3)
    appender.close()


def test_adopted_spools_are_read_first_and_removed_when_drained(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    old = SpoolDirectory.create(root)
    old_appender = SpoolAppender(old)
    append_all(old_appender, payloads(3, "old"))
    old_appender.close()
    old.release()  # its process is gone

    own = SpoolDirectory.create(root)
    appender = SpoolAppender(own)
    append_all(appender, payloads(2, "new"))
    adopted = SpoolDirectory.try_adopt(old.path)
    assert adopted is not None
    reader = SpoolReader()
    reader.add_own(own, appender)
    reader.add_adopted(adopted)
    batch = reader.read(100)
    assert [r.payload for _, r in batch.records] == payloads(3, "old") + payloads(2, "new")
    reader.commit(batch)
    assert not old.path.exists()
    assert own.path.exists()
    appender.close()


# --- ownership ---------------------------------------------------------------------------------


def test_a_live_owners_spool_cannot_be_adopted(directory: SpoolDirectory) -> None:
    assert SpoolDirectory.try_adopt(directory.path) is None  # flock conflicts even in-process
    directory.release()
    adopted = SpoolDirectory.try_adopt(directory.path)
    assert adopted is not None
    assert SpoolDirectory.try_adopt(directory.path) is None, "adoption is exclusive"


def test_the_spool_of_a_killed_process_is_adopted_with_every_acknowledged_record(tmp_path: Path) -> None:
    """A real process appends, reports each acknowledged record, and is killed with SIGKILL."""
    root = tmp_path / "spool"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from service.storage.prediction_log.spool import SpoolAppender, SpoolDirectory
        directory = SpoolDirectory.create(Path({str(root)!r}))
        appender = SpoolAppender(directory)
        i = 0
        while True:
            appender.append(f"record-{{i}}".encode()).result()
            print(i, flush=True)
            i += 1
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = [int(child.stdout.readline()) for _ in range(200)]
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    acknowledged += [int(line) for line in child.stdout.read().split()]

    (path,) = SpoolDirectory.siblings(root)
    adopted = SpoolDirectory.try_adopt(path)  # the kernel dropped the dead owner's lock
    assert adopted is not None
    stored = [r.payload.decode() for seq in adopted.seqs() for r in read_records(adopted.segment_path(seq))]
    assert stored[: len(acknowledged)] == [f"record-{i}" for i in acknowledged]
    assert len(stored) <= len(acknowledged) + 1  # at most the record being acknowledged when killed
    adopted.release()
