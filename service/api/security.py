"""Who may write: the API key on mutating endpoints, or loopback clients when no key is set.

Reads (predictions, the prediction log, models, health, metrics) stay open. Writes change what
every later prediction sees (bars) or what accuracy says (feedback), so they need `API_KEY` in
the `X-API-Key` header when the service has one; without one only clients on the same machine
may write (start-up logs a warning saying so). Keys are compared in constant time.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

from service.config import Settings

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    scheme_name="ApiKey",
    description="Required on writes when the service sets API_KEY (without one, loopback clients only).",
)


class WriteAccessError(HTTPException):
    """401 (no or wrong key) or 403 (no key configured and the client is not on this machine)."""


def require_writer(request: Request, key: Annotated[str | None, Depends(api_key_header)]) -> None:
    """Dependency of every mutating route."""
    settings: Settings = request.app.state.container.settings
    check_write_access(settings, key=key, client_host=request.client.host if request.client else None)


def check_write_access(settings: Settings, *, key: str | None, client_host: str | None) -> None:
    expected = settings.API_KEY
    if expected is not None:
        if not key:
            raise WriteAccessError(
                status.HTTP_401_UNAUTHORIZED,
                f"this endpoint writes data: send the API key in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
        if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
            raise WriteAccessError(
                status.HTTP_401_UNAUTHORIZED,
                f"the {API_KEY_HEADER} header does not hold the configured API key",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
        return
    if not is_loopback(client_host):
        raise WriteAccessError(
            status.HTTP_403_FORBIDDEN,
            "no API_KEY is configured, so writes are accepted from loopback clients only",
        )


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def log_write_policy(settings: Settings) -> None:
    """Say at start-up who may write, so an open-to-loopback service is never a surprise."""
    if settings.API_KEY is None:
        log.warning(
            "API_KEY is not set: POST /market-data and POST /feedback accept loopback clients only; "
            "set API_KEY to accept writes from elsewhere"
        )
    else:
        log.info("writes require the API key", extra={"header": API_KEY_HEADER})


WriterDep = Depends(require_writer)
