"""A TCP proxy on loopback that makes a real server slow, or unresponsive, on demand.

    client (the service) --> LatencyProxy :port --> upstream server :upstream_port

Fault tests put it between the service and Redis, PostgreSQL or the collector, and turn a knob:

- `set_delay(s)`: every chunk is forwarded `s` seconds after it arrived, in order, both ways. That
  is added latency (each request/response round trip costs 2·s), not a throughput limit: chunks
  in flight overlap.
- `blackhole()`: connections are accepted and read, but nothing is forwarded, as when a server
  hangs (a stopped process, a full disk) while its kernel still accepts connections. What was
  held is delivered in order once `pass_through()` or `set_delay()` restores the flow, as TCP
  delivers what it retransmitted once a partition heals (nothing reaches a client that has
  closed its socket meanwhile).
- `reset_connections()`: close every open connection at once (both sides).

A connection whose upstream refuses (the server was killed) is reset at once, so the client sees
a connection error as it would without the proxy. Everything runs in one asyncio loop in a daemon
thread; bounded: at most `max_connections` at a time (others are reset), and per direction at
most `MAX_HELD_CHUNKS` chunks waiting, after which the proxy stops reading (TCP back-pressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from tests.harness.process import LOOPBACK

CHUNK_BYTES = 65536
MAX_HELD_CHUNKS = 64  # per direction: at most 4 MiB held
START_TIMEOUT = 10.0
DELAY_STEP = 0.05


@dataclass
class ProxyStats:
    """What went through since the proxy started (read by tests to show the fault happened)."""

    accepted: int = 0
    refused_upstream: int = 0
    over_limit: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class LatencyProxy:
    """Forwards `LOOPBACK:port` to `upstream_host:upstream_port`, with latency or not at all."""

    def __init__(
        self, upstream_port: int, *, upstream_host: str = LOOPBACK, max_connections: int = 256
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.max_connections = max_connections
        self.stats = ProxyStats()
        self.port = 0
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._thread = threading.Thread(target=self._run, name=f"latency-proxy-{upstream_port}", daemon=True)
        self._ready = threading.Event()

    # --- control (any thread) ---------------------------------------------------------------------

    def start(self) -> LatencyProxy:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError("the latency proxy did not start listening")
        return self

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def delay(self) -> float:
        return self._delay

    def set_delay(self, seconds: float) -> None:
        """Forward each chunk `seconds` after it arrived (0: at once); also ends a black-hole."""
        self._delay = max(0.0, seconds)
        self._call(self._set_flowing, True)

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open and keep being accepted."""
        self._call(self._set_flowing, False)

    def pass_through(self) -> None:
        """No delay, everything flows (what was held goes out first)."""
        self.set_delay(0.0)

    def reset_connections(self) -> None:
        """Abort every open connection, client and upstream side."""
        self._call(self._abort_all)

    def open_connections(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown)
        self._thread.join(timeout=10)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, function: object, *args: object) -> None:
        """Run `function(*args)` on the proxy's loop and wait for it (a control call is synchronous)."""
        done = threading.Event()

        def run() -> None:
            try:
                function(*args)  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(timeout=10)

    # --- the loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _abort_all(self) -> None:
        for connection in list(self._connections):
            connection.abort()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        self._loop.stop()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if len(self._connections) >= self.max_connections:
            self.stats.over_limit += 1
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            self.stats.refused_upstream += 1
            _reset(client_writer)
            return
        connection = _Connection(self, client_writer, upstream_writer)
        self._connections.add(connection)
        try:
            await connection.run(client_reader, upstream_reader)
        finally:
            self._connections.discard(connection)
            connection.abort()

    async def wait_forwardable(self, arrived: float) -> None:
        """Until a chunk that arrived at `arrived` may go out: flowing, and its delay has passed."""
        assert self._flowing is not None
        while True:
            await self._flowing.wait()
            remaining = arrived + self._delay - time.monotonic()
            if remaining <= 0 and self._flowing.is_set():
                return
            if remaining > 0:
                await asyncio.sleep(min(remaining, DELAY_STEP))  # a shorter delay set meanwhile applies


class _Connection:
    """One proxied connection: a pump per direction, each reading one side and writing the other."""

    def __init__(
        self, proxy: LatencyProxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        self._proxy = proxy
        self._client = client
        self._upstream = upstream
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, client_reader: asyncio.StreamReader, upstream_reader: asyncio.StreamReader) -> None:
        self._tasks = [
            asyncio.ensure_future(self._pump(client_reader, self._upstream, up=True)),
            asyncio.ensure_future(self._pump(upstream_reader, self._client, up=False)),
        ]
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Forward chunks in arrival order, each once it may go; an error on either side aborts both."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=MAX_HELD_CHUNKS)

        async def read() -> None:
            try:
                while chunk := await reader.read(CHUNK_BYTES):
                    await queue.put((time.monotonic(), chunk))  # waits when full: back-pressure
            except OSError:
                self.abort()
            finally:
                await queue.put(None)

        reading = asyncio.ensure_future(read())
        try:
            while (item := await queue.get()) is not None:
                arrived, chunk = item
                await self._proxy.wait_forwardable(arrived)
                writer.write(chunk)
                await writer.drain()
                if up:
                    self._proxy.stats.bytes_up += len(chunk)
                else:
                    self._proxy.stats.bytes_down += len(chunk)
            if writer.can_write_eof():
                writer.write_eof()  # half-close, as the other side did
        except OSError:
            self.abort()
        finally:
            reading.cancel()

    def abort(self) -> None:
        for writer in (self._client, self._upstream):
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), which a client reports as a connection reset, not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
