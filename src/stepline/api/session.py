"""Who is using the dashboard, and whether a form was posted by the dashboard itself.

Access follows the API's rule (:func:`stepline.api.security.require_token`). Besides a
bearer token or HTTP Basic with the token as password, a browser may sign in once at
``/ui/login``: it gets a signed session cookie (``HttpOnly``, ``SameSite=Strict``) whose
key is derived from the API token, so changing the token ends every session.

Every state-changing form carries a CSRF token: an HMAC of a random nonce kept in its own
``HttpOnly``, ``SameSite=Strict`` cookie. A request from another site can neither read the
nonce nor compute the HMAC, so it cannot post a valid form (nor can a page without it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.security.utils import get_authorization_scheme_param

from stepline.api.security import require_token
from stepline.service import Stepline

__all__ = [
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "Visitor",
    "check_csrf",
    "csrf_token",
    "identify",
    "new_session",
    "token_matches",
]

SESSION_COOKIE = "stepline_session"
CSRF_COOKIE = "stepline_csrf"
SESSION_SECONDS = 12 * 3600
_PROCESS_KEY = secrets.token_bytes(32)  # used only when no token is configured


@dataclass(frozen=True)
class Visitor:
    """An admitted request: ``actor`` is what the audit trail records."""

    actor: str
    via: str
    """'session', 'bearer', 'basic' or 'local' (no token configured)."""


def _key(service: Stepline, purpose: str) -> bytes:
    token = service.settings.api_token
    root = token.get_secret_value().encode("utf-8") if token is not None else _PROCESS_KEY
    return hmac.new(root, f"stepline-dashboard:{purpose}".encode(), hashlib.sha256).digest()


def _sign(service: Stepline, purpose: str, message: str) -> str:
    digest = hmac.new(_key(service, purpose), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_matches(service: Stepline, offered: str) -> bool:
    token = service.settings.api_token
    if token is None:
        return True
    return hmac.compare_digest(offered.encode("utf-8"), token.get_secret_value().encode("utf-8"))


def new_session(service: Stepline, now: float | None = None) -> str:
    """A session cookie's value: expiry and nonce, signed."""
    expires = int((now or time.time()) + SESSION_SECONDS)
    message = f"{expires}.{secrets.token_urlsafe(16)}"
    return f"{message}.{_sign(service, 'session', message)}"


def _session_valid(service: Stepline, value: str | None) -> bool:
    if not value or service.settings.api_token is None:
        return False
    message, _dot, signature = value.rpartition(".")
    expires, _dot2, _nonce = message.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature, _sign(service, "session", message))


def _offered(request: Request) -> tuple[str | None, str]:
    """The token a request carries (bearer, or the password of HTTP Basic) and how."""
    scheme, value = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() == "bearer":
        return value or None, "bearer"
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None, "basic"
        _user, colon, password = decoded.partition(":")
        return (password if colon else None), "basic"
    return None, ""


def identify(request: Request, service: Stepline) -> Visitor:
    """The visitor, or HTTPException (401/403) as the API would refuse the request.

    A valid session cookie counts as the token. The open-API rules (this machine only, no
    cross-site or rebound host) apply whatever is offered when no token is configured.
    """
    if service.settings.api_token is not None and _session_valid(
        service, request.cookies.get(SESSION_COOKIE)
    ):
        return Visitor("api token (session)", "session")
    token, via = _offered(request)
    offered = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token) if token else None
    require_token(request, service, offered)
    if service.settings.api_token is None:
        return Visitor("local (no token configured)", "local")
    return Visitor("basic auth" if via == "basic" else "api token", via)


def csrf_nonce(request: Request) -> tuple[str, bool]:
    """The request's CSRF nonce, and whether it is new (then it must be set as a cookie)."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if 16 <= len(nonce) <= 64 and nonce.replace("-", "").replace("_", "").isalnum():
        return nonce, False
    return secrets.token_urlsafe(24), True


def csrf_token(service: Stepline, nonce: str) -> str:
    """The value a form must post along with the nonce cookie."""
    return _sign(service, "csrf", nonce)


def check_csrf(request: Request, service: Stepline, posted: str | None) -> None:
    """Raise 403 unless ``posted`` is the CSRF token of the request's nonce cookie."""
    nonce = request.cookies.get(CSRF_COOKIE)
    if not nonce or not posted or not hmac.compare_digest(posted, csrf_token(service, nonce)):
        raise HTTPException(
            403, "missing or invalid CSRF token: reload the page and submit the form again"
        )


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None
) -> None:
    """Set an ``HttpOnly``, ``SameSite=Strict`` cookie for the dashboard's path."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=(str(request.scope.get("root_path", "")) or "") + "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
