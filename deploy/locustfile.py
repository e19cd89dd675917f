"""Steady, realistic traffic for a demo stack: what the load generator of `make stack` and compose runs.

    locust -f deploy/locustfile.py --headless --users 5 --spawn-rate 5 --host http://127.0.0.1:8000

Each simulated client mostly asks for predictions (single and batch), reads back its own earlier
predictions, now and then reports an outcome, looks at the model, the feature store and the health
endpoint, and about 2 % of its requests are bad ones (an unknown symbol, a malformed body). Bad
requests must be answered with a 4xx: a 5xx counts as a failure in Locust's statistics, and so does
a 4xx on a good request.

Rate: `LOAD_RATE` requests per second in total (default 10), spread evenly over the users (Locust's
`constant_throughput` per user: users x per-user rate = LOAD_RATE). Users and spawn rate are
Locust's own options (`--users`, `LOCUST_USERS`, ...).

`API_KEY`, when set, is sent as the `X-API-Key` header on every request that changes something
(predictions are logged, feedback is recorded), for a service that requires a key on those.
"""

from __future__ import annotations

import os
import random
from collections import deque
from typing import Any

from locust import HttpUser, constant_throughput, task

SYMBOLS = os.environ.get("SYMBOLS", "AAPL,AMZN,GOOGL,MSFT,NVDA").split(",")
RATE = float(os.environ.get("LOAD_RATE", "10"))
API_KEY_HEADER = "X-API-Key"
# Own predictions a user remembers, to read back and give feedback on.
REMEMBERED = 50


class ApiClient(HttpUser):
    """One client of the prediction API."""

    def on_start(self) -> None:
        self.own: deque[str] = deque(maxlen=REMEMBERED)
        key = os.environ.get("API_KEY")
        self.write_headers = {API_KEY_HEADER: key} if key else {}

    def wait_time(self) -> float:
        users = max(1, int(getattr(self.environment.parsed_options, "num_users", None) or 1))
        pace: float = constant_throughput(RATE / users)(self)
        return pace

    def _post(self, path: str, body: Any, *, name: str | None = None, ok: tuple[int, ...] = (200,)) -> Any:
        """POST with the write headers; a status outside `ok` fails the request in the statistics."""
        with self.client.post(
            path, json=body, headers=self.write_headers, name=name or path, catch_response=True
        ) as response:
            if response.status_code in ok:
                response.success()
                return response.json() if response.status_code == 200 else None
            response.failure(f"{response.status_code}: {response.text[:200]}")
            return None

    # --- predictions ------------------------------------------------------------------------------

    @task(40)
    def predict(self) -> None:
        body = self._post("/predict", {"symbol": random.choice(SYMBOLS)})
        if body:
            self.own.append(body["prediction_id"])

    @task(12)
    def predict_batch(self) -> None:
        symbols = random.sample(SYMBOLS, k=random.randint(2, min(4, len(SYMBOLS))))
        body = self._post("/predict/batch", {"symbols": symbols})
        if body:
            self.own.extend(item["prediction_id"] for item in body["predictions"])

    @task(12)
    def read_own_prediction(self) -> None:
        if not self.own:
            return self.predict()
        self.client.get(f"/predictions/{random.choice(self.own)}", name="/predictions/{id}")
        return None

    @task(4)
    def feedback(self) -> None:
        """Confirm the outcome of an own prediction once it is known, as a client that watches the
        market would. Repeating the outcome the new bar already recorded is harmless (200); a
        random direction would instead overwrite pending rows at random and make the accuracy noise.
        """
        if not self.own:
            return
        prediction_id = self.own.popleft()
        record = self.client.get(f"/predictions/{prediction_id}", name="/predictions/{id}").json()
        if record.get("status") != "resolved":
            self.own.append(prediction_id)  # not known yet: later
            return
        body = {"prediction_id": prediction_id, "actual_direction": record["actual_direction"]}
        self._post("/feedback", body)

    # --- reads ------------------------------------------------------------------------------------

    @task(4)
    def current_model(self) -> None:
        self.client.get("/models/current")

    @task(4)
    def feature_store_stats(self) -> None:
        self.client.get("/feature-store/stats")

    @task(4)
    def feature_metadata(self) -> None:
        self.client.get(
            f"/feature-store/metadata/{random.choice(SYMBOLS)}", name="/feature-store/metadata/{symbol}"
        )

    @task(4)
    def health(self) -> None:
        self.client.get("/health")

    # --- bad requests (2 of 86 weights, about 2 %) --------------------------------------------------

    @task(1)
    def unknown_symbol(self) -> None:
        self._post("/predict", {"symbol": "ZZZZ"}, name="/predict [unknown symbol]", ok=(404,))

    @task(1)
    def malformed_body(self) -> None:
        body = random.choice([{"symbol": 42}, {"symbols": []}, {}, {"symbol": "AAPL", "extra": True}])
        path = "/predict/batch" if "symbols" in body else "/predict"
        self._post(path, body, name=f"{path} [malformed]", ok=(422,))
