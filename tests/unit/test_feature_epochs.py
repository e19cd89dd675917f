"""Feature epochs: counters shared between processes through one mapped file, never a lost bump."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from service.serving.feature_epochs import FeatureEpochs, slot_of

BUMPS = 500


def _bump_many(path: str, symbol: str, count: int) -> None:
    epochs = FeatureEpochs(Path(path))
    for _ in range(count):
        epochs.bump([symbol])
    epochs.close()


def test_a_bump_in_one_mapping_is_seen_by_another(tmp_path: Path) -> None:
    first, second = FeatureEpochs(tmp_path / "epochs"), FeatureEpochs(tmp_path / "epochs")
    before = second.current("AAPL")
    first.bump(["AAPL"])
    assert second.current("AAPL") == before + 1
    first.close()
    second.close()


def test_concurrent_bumps_from_two_processes_are_all_counted(tmp_path: Path) -> None:
    path = tmp_path / "epochs"
    FeatureEpochs(path).close()  # the file exists before either child maps it
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_bump_many, args=(str(path), "MSFT", BUMPS)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    epochs = FeatureEpochs(path)
    assert epochs.current("MSFT") == 2 * BUMPS
    epochs.close()


def test_symbols_in_other_slots_are_untouched(tmp_path: Path) -> None:
    epochs = FeatureEpochs(tmp_path / "epochs")
    assert slot_of("AAPL") != slot_of("MSFT")
    epochs.bump(["AAPL", "AAPL"])  # one bump per call, however often a symbol is named
    assert (epochs.current("AAPL"), epochs.current("MSFT")) == (1, 0)
    epochs.close()


def test_after_close_reads_and_bumps_stay_in_the_process(tmp_path: Path) -> None:
    epochs = FeatureEpochs(tmp_path / "epochs")
    epochs.bump(["AAPL"])
    epochs.close()
    epochs.bump(["AAPL"])  # no error during shutdown; the shared file keeps what it had
    reopened = FeatureEpochs(tmp_path / "epochs")
    assert reopened.current("AAPL") == 1
    reopened.close()
