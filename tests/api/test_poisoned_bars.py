"""Defence in depth: a stored bar that breaks the rules (written before they existed, or behind
the API's back) never reaches the model, decides no outcome, and re-posting it corrected heals
the symbol at once.
"""

from __future__ import annotations

import math
from datetime import datetime

from fastapi.testclient import TestClient

from service.api.schemas import Bar
from service.container import Container
from service.market.synthetic import synthetic_bars_after
from service.storage.market_bars import BarIn, upsert_bars


def test_an_unusable_stored_bar_is_a_409_naming_the_feature_and_the_bar(api: TestClient) -> None:
    container: Container = api.app.state.container  # type: ignore[attr-defined]
    prediction = api.post("/predict", json={"symbol": "AAPL"}).json()
    sound = synthetic_bars_after("AAPL", after=datetime.fromisoformat(prediction["as_of"]), count=1)[0]
    poisoned = BarIn(sound.symbol, sound.ts, sound.open, math.inf, sound.low, math.inf, sound.volume)
    with container.database.session() as session:  # straight into the table, as legacy data would be
        upsert_bars(session, bars=[poisoned])
    container.feature_store.invalidate(["AAPL"])
    assert container.predictions.resolve_due(["AAPL"]) == 0, "an infinite close decided an outcome"

    for response in (api.post("/predict", json={"symbol": "AAPL"}), api.get("/feature-store/metadata/AAPL")):
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["feature"] in container.models.current.feature_names  # type: ignore[union-attr]
        assert datetime.fromisoformat(body["bar"]) == sound.ts
        assert "re-post a corrected bar" in body["detail"]
    assert api.get(f"/predictions/{prediction['prediction_id']}").json()["status"] == "pending"

    healed = api.post("/market-data", json={"bars": [Bar.from_bar_in(sound).model_dump(mode="json")]})
    assert healed.status_code == 200, healed.text
    assert healed.json() == {"inserted": 0, "updated": 1, "symbols": ["AAPL"], "resolved_predictions": 1}
    again = api.post("/predict", json={"symbol": "AAPL"})
    assert again.status_code == 200, again.text
    assert datetime.fromisoformat(again.json()["as_of"]) == sound.ts
