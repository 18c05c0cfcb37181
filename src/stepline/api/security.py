"""Who may call the HTTP API: a bearer token, or nobody but this machine.

With ``STEPLINE_API_TOKEN`` set, every endpoint except ``/healthz`` (and the OpenAPI
documents) requires ``Authorization: Bearer <token>``. Without a token the API is open, so
``serve`` may only listen on a loopback address (:func:`check_bind`), and requests from
other machines, or that a web page of another site could forge (cross-origin, DNS-rebound
host names), are refused.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stepline.api.dependencies import ServiceDep

__all__ = ["bearer_scheme", "check_bind", "check_token", "is_loopback", "require_token"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="The value of STEPLINE_API_TOKEN; not required when no token is configured.",
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IPv4/IPv6 address, brackets allowed) is this machine only."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> None:
    """Raise ValueError for a configured but blank token, which no client could send."""
    if token is not None and not token.strip():
        raise ValueError(
            "STEPLINE_API_TOKEN is set but blank; set a long random value "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) or unset it"
        )


def check_bind(host: str, token_configured: bool) -> None:
    """Refuse to serve an open API beyond this machine.

    Raises ValueError when ``host`` is not a loopback address (127.0.0.0/8, ::1, localhost)
    and no API token is configured; ``0.0.0.0``, ``::`` and every other name count as
    reachable from elsewhere. Does nothing otherwise.
    """
    if token_configured or is_loopback(host):
        return
    raise ValueError(
        f"refusing to listen on {host!r} without an API token: anyone who can reach it could "
        "run and change batches. Set STEPLINE_API_TOKEN (clients then send "
        "'Authorization: Bearer <token>'), or listen on 127.0.0.1"
    )


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"}
    )


def _refusal_without_token(request: Request) -> str | None:
    """Why a request to an API without a token must be refused, or None to serve it."""
    # Defence in depth: even if the server was started on a public address by hand, an
    # open API answers only connections made from this machine.
    if request.client is not None and request.client.host and not is_loopback(request.client.host):
        return f"request from {request.client.host}, not from this machine"
    host_header = request.headers.get("host", "")
    origin = request.headers.get("origin")
    try:
        host = urlsplit(f"//{host_header}").hostname or ""
        origin_netloc = urlsplit(origin).netloc.lower() if origin else None
    except ValueError:
        return "malformed Host or Origin header"
    # DNS rebinding makes evil.example resolve to 127.0.0.1; its requests name that host.
    if host_header and not is_loopback(host):
        return f"host {host_header!r} is not a loopback name"
    if origin == "null":
        return "request from an opaque origin"
    if origin_netloc is not None and origin_netloc != host_header.lower():
        return f"cross-origin request from {origin!r}"
    return None


def require_token(
    request: Request,
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """FastAPI dependency: pass a request carrying the configured bearer token.

    Raises 401 (with ``WWW-Authenticate: Bearer``) for a missing, malformed or wrong token.
    With no token configured it passes requests made on this machine, except those a web
    page of another site could forge (cross-origin, DNS-rebound host), which get 403.
    """
    expected = service.settings.api_token
    if expected is None:
        reason = _refusal_without_token(request)
        if reason:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"refused: {reason}; an API without STEPLINE_API_TOKEN only "
                "answers requests made on this machine",
            )
        return
    if credentials is None:
        raise _unauthorized("missing 'Authorization: Bearer <token>' header")
    # compare_digest takes as long for a near miss as for a wild guess: no timing oracle.
    if not hmac.compare_digest(
        credentials.credentials.encode("utf-8"), expected.get_secret_value().encode("utf-8")
    ):
        raise _unauthorized("invalid API token")
