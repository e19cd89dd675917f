"""Generic pieces for running real programs in tests: ports, polling, binaries, child processes.

Nothing here knows about a particular server; `servers.py` builds on these.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import pytest

LOOPBACK = "127.0.0.1"

INSTALL_HINT = "install it with scripts/install-system-deps.sh (`make test` runs it)"


def free_port() -> int:
    """Return a TCP port that was free on loopback a moment ago.

    The kernel picks it (bind to port 0). Another process could take it before our server binds;
    on a test machine that race is rare enough, and the server's start then fails loudly.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free ports (two free_port() calls may hand out the same one)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str) -> None:
    """Poll `predicate` until it returns true, or raise TimeoutError naming `what`.

    This replaces sleeps: the test waits exactly as long as needed and no longer than `timeout`.
    An exception raised by the predicate means "not yet" (a server that is still starting refuses
    connections); the last one is quoted in the timeout message because it usually says why.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
            last_error = None
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def in_ci() -> bool:
    """CI sets CI=true; there a missing dependency must fail the run instead of skipping tests."""
    return os.environ.get("CI", "").lower() == "true"


def require_binary(name: str, *candidates: str) -> str:
    """Find an executable by name on PATH, else at one of `candidates` (paths, globs allowed).

    Globs let callers say `/usr/lib/postgresql/*/bin/postgres`; the highest version wins.
    When nothing is found the test is skipped locally but fails in CI, so CI can't go green by
    silently testing nothing.
    """
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        for path in sorted(glob.glob(candidate), reverse=True):
            if os.access(path, os.X_OK):
                return path
    message = f"{name} not found on PATH or at {list(candidates)}; {INSTALL_HINT}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


class ProcessExitedError(RuntimeError):
    """The program died while we were waiting for it to become ready."""


class ManagedProcess:
    """A child process whose output goes to a log file and which is always torn down.

    It runs in its own process group so that `stop()` also reaches anything it spawned. Every
    instance is registered so the pytest plugin can show its log when a test fails and so that
    an interpreter exit stops whatever a crashed test left running.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
    ) -> None:
        """Start `argv` now. `env` is added on top of this process's environment.

        `user` runs the program as that system user (needs root; PostgreSQL refuses to run as
        root). `stop_signal` is the program's graceful-shutdown signal.
        """
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self._log.write(f"--- {name}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            process_group=0,
        )
        self.pid = self._popen.pid
        _REGISTRY.append(self)

    def is_running(self) -> bool:
        return self._popen.poll() is None

    def restarted(self) -> ManagedProcess:
        """The same program started again (same argv, environment, log): after a stop or a kill."""
        return ManagedProcess(
            self.name,
            self.argv,
            log_path=self.log_path,
            env=self.env,
            cwd=self.cwd,
            user=self.user,
            stop_signal=self.stop_signal,
            stop_timeout=self.stop_timeout,
        )

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, not a shutdown."""
        self._kill_group()
        self._popen.wait(timeout=self.stop_timeout)

    def signal(self, signum: int) -> None:
        """Send a signal to the program itself (e.g. SIGTERM, to test its graceful shutdown)."""
        self._popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the program to exit; its return code."""
        return self._popen.wait(timeout=timeout)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def stop(self) -> None:
        """Ask the program to shut down, kill it after `stop_timeout`, then kill its leftovers.

        Safe to call any number of times. The graceful signal goes to the leader only (PostgreSQL
        for instance shuts its own children down); SIGKILL goes to the whole group.
        """
        if self._popen.poll() is None:
            self._popen.send_signal(self.stop_signal)
            try:
                self._popen.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._popen.wait(timeout=self.stop_timeout)
        self._kill_group()
        if not self._log.closed:
            self._log.close()

    def _kill_group(self) -> None:
        # The group id is the leader's pid (process_group=0). Linux doesn't hand out a pid that
        # is still some group's id, so this can only hit our own leftovers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 80, *, since: int = 0) -> str:
        """Last `lines` lines of the log, optionally only what was written after byte `since`."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(since)
                text = handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, probe: Callable[[], bool], *, timeout: float, what: str) -> None:
        """`wait_until` that gives up at once if the program exits, quoting its log either way."""
        exited = False

        def ready_or_exited() -> bool:
            nonlocal exited
            exited = not self.is_running()
            return exited or probe()

        try:
            wait_until(ready_or_exited, timeout=timeout, what=f"{self.name} to be ready ({what})")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log {self.log_path}:\n{self.log_tail()}") from None
        if exited:
            raise ProcessExitedError(
                f"{self.name} exited with code {self.returncode} before it was ready; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state})"


# Every ManagedProcess ever started in this interpreter, oldest first. Small: a test session starts
# a few dozen at most.
_REGISTRY: list[ManagedProcess] = []


def all_processes() -> list[ManagedProcess]:
    """Every process started so far (running or not), for the failure-log hook."""
    return list(_REGISTRY)


@atexit.register
def _stop_leftovers() -> None:
    """Last line of defence: never leave servers running after pytest exits."""
    for process in reversed(_REGISTRY):
        process.stop()
