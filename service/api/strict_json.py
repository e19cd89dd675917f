"""JSON bodies as RFC 8259 defines them: no NaN, no Infinity, no number that overflows to inf.

Python's `json.loads` (which Starlette's `Request.json` uses) accepts all three; a bar priced
`Infinity` would then get as far as validation, or, in a field validation forgets, into the
features. Refusing them while parsing makes them what they are: unparsable bodies (400).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError(f"number {text[:40]} is out of range", text, 0)
    return value


def loads_strict(body: bytes) -> Any:
    return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose body is parsed by `loads_strict` (FastAPI's documented custom-route hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
