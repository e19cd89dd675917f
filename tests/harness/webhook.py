"""An HTTP endpoint that records what is POSTed to it: the receiver Alertmanager notifies in tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.harness.process import LOOPBACK


class WebhookSink:
    """Records every JSON body POSTed to it, from a server thread on a free loopback port.

    Alertmanager's webhook payload is a JSON object (`status`, `alerts`, `groupLabels`, ...); the
    sink keeps bodies as parsed JSON in arrival order. A body that is not JSON is kept as text so a
    test can see what arrived instead of a silent drop.
    """

    def __init__(self) -> None:
        self._bodies: list[Any] = []
        self._arrived = threading.Condition()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://{LOOPBACK}:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)
        self._thread.start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                sink._record(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output for test results

        return Handler

    def _record(self, body: Any) -> None:
        with self._arrived:
            self._bodies.append(body)
            self._arrived.notify_all()

    def received(self) -> list[Any]:
        """A copy of every body received so far, oldest first."""
        with self._arrived:
            return list(self._bodies)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float) -> Any:
        """Return the first received body matching `predicate`, waiting up to `timeout` seconds.

        Wakes on each arrival instead of polling. Raises TimeoutError listing what did arrive.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for body in self._bodies:
                    if predicate(body):
                        return body
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no matching webhook body within {timeout:.1f}s; received {len(self._bodies)}: "
                        f"{json.dumps(self._bodies)[:2000]}"
                    )
                self._arrived.wait(remaining)

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
