"""Removing secrets from URLs, free text and log events before they leave the process."""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "MASK",
    "SECRET_QUERY_KEYS",
    "redact_processor",
    "redact_text",
    "redact_url",
    "url_secrets",
]

MASK = "***"

SECRET_QUERY_KEYS = frozenset(
    {
        "key",
        "apikey",
        "api_key",
        "token",
        "access_token",
        "secret",
        "password",
        "passwd",
        "servicekey",
        "signature",
        "sig",
    }
)
# Catches vendor spellings such as refresh_token, client_secret or X-Amz-Signature.
_SECRET_KEY_SUFFIXES = ("_key", "_token", "_secret", "_password", "_signature")

# Webhook services whose URL path is itself the credential.
_SECRET_PATH_HOSTS = frozenset({"hooks.slack.com"})

_MIN_SECRET_LENGTH = 4
_LETTERS = frozenset(string.ascii_letters)
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
_URL_STOPS = frozenset("'\"<>`")


def _is_secret_key(name: str) -> bool:
    normalized = unquote(name).strip().lower().replace("-", "_")
    return normalized in SECRET_QUERY_KEYS or normalized.endswith(_SECRET_KEY_SUFFIXES)


def _redact_query(query: str, found: list[str]) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if sep and value and _is_secret_key(name):
            found.append(value)
            found.append(unquote(value))
            part = f"{name}={MASK}"
        parts.append(part)
    return "&".join(parts)


def _redact(url: str) -> tuple[str, list[str]]:
    found: list[str] = []
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            found.append(password)
            found.append(unquote(password))
            netloc = f"{user}:{MASK}@{hostport}"
    path = parts.path
    if hostport.lower().split(":")[0] in _SECRET_PATH_HOSTS:
        # The first segment names the kind of hook (services, workflows, triggers).
        head, slash, tail = path.lstrip("/").partition("/")
        if tail:
            found.append(tail)
            path = f"/{head}{slash}{MASK}"
    query = _redact_query(parts.query, found)
    # OAuth implicit flows put access tokens in the fragment.
    fragment = _redact_query(parts.fragment, found) if "=" in parts.fragment else parts.fragment
    redacted = urlunsplit((parts.scheme, netloc, path, query, fragment))
    return redacted, [secret for secret in found if secret]


def redact_url(url: str) -> str:
    """Return ``url`` with its password, secret query values and secret path masked."""
    try:
        return _redact(url)[0]
    except ValueError:
        # An unparseable URL cannot be redacted piecewise; hide all of it rather than leak it.
        return MASK


def url_secrets(url: str) -> list[str]:
    """Return the parts of ``url`` that :func:`redact_url` masks, for use with redact_text."""
    try:
        return _redact(url)[1]
    except ValueError:
        return [url]


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Mask every occurrence of each secret (4+ characters) and every URL's secret parts."""
    candidates: set[str] = set()
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LENGTH:
            candidates.add(secret)
            # Secrets often travel percent- or form-encoded inside URLs and request bodies.
            candidates.add(quote(secret, safe=""))
            candidates.add(quote_plus(secret))
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(candidates, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _redact_urls(text)


def _redact_urls(text: str) -> str:
    """Apply redact_url to each ``scheme://rest`` in ``text``.

    A scan outward from each ``://``, not a regular expression: a regex for URLs
    backtracks quadratically over long runs of letters, and this runs on every log line
    and API answer (a 1 MB parameter would hold a thread for minutes).
    """
    out: list[str] = []
    done = 0
    while (marker := text.find("://", done)) >= 0:
        start = marker
        while start > done and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        while start < marker and text[start] not in _LETTERS:
            start += 1  # a scheme begins with a letter
        end = marker + 3
        while end < len(text) and text[end] not in _URL_STOPS and not text[end].isspace():
            end += 1
        if start == marker or end == marker + 3:
            out.append(text[done : marker + 3])
            done = marker + 3
            continue
        out.append(text[done:start])
        out.append(redact_url(text[start:end]))
        done = end
    out.append(text[done:])
    return "".join(out)


def _redact_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {key: _redact_value(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item, secrets) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(item, secrets) for item in value)
    return value


def redact_processor(secrets_provider: Callable[[], Iterable[str]]) -> Processor:
    """Build a structlog processor that applies :func:`redact_text` to every string value.

    Place it after ``format_exc_info`` so that rendered tracebacks are redacted too.
    """

    def processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        secrets = list(secrets_provider())
        return {key: _redact_value(value, secrets) for key, value in event_dict.items()}

    return processor


def is_secret_name(name: str) -> bool:
    """Whether a key, query parameter or param name marks its value as a secret."""
    return _is_secret_key(name)
