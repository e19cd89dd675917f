"""CPU time of processes, from /proc and getrusage: the steadier figure on a shared machine.

Throughput on two cores that other work also uses moves with that work; the CPU time a server
spends per request moves much less. The load generators' own CPU is measured too: they share
the cores with the server, and what they burn the server cannot use.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # Fields after the command name (which may hold spaces) start at field 3; utime, stime are 14, 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds of these processes and all their live descendants (uvicorn's workers)."""
    total = 0.0
    pending = list(pids)
    while pending:
        pid = pending.pop()
        total += process_cpu_seconds(pid)
        pending += children(pid)
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of every child this process has waited for (a finished wrk or vegeta run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
