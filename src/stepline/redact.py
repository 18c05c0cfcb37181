"""The one redactor: secrets removed from text, structures and log events on their way out.

Every exit calls it (SPEC guarantee 7): CLI output, API answers and pages, log lines and
alerts. Three rules apply to every string, each one pass of a compiled pattern or a scan,
so the cost is linear in the text's length:

1. **Known values.** The secret values a caller knows (settings, the database URL, the
   secret params of the instance shown) are masked wherever they appear, under any key or
   inside any message, also percent-, form-, JSON- or repr-encoded. Values shorter than
   :data:`MIN_SECRET_LENGTH` are not matched by value: masking every "7" or "ab" would wreck
   the output and reveal nothing worth hiding; rules 2 and 3 and the key rule still hide them.
2. **Assignments.** The value after a secret name in text: ``password=...``,
   ``"api_key": "..."``, ``Pwd=...;`` of an ODBC connection string, ``Authorization: Bearer ...``.
3. **URLs.** The password of ``scheme://user:password@host``, secret query values
   (``?token=``), and the path of webhook services whose path is the credential.

In a structure (params, results, log event fields) a value under a secret name is masked
whole, whatever its length, unless it only refers to an environment variable (``${NAME}``).
"""

from __future__ import annotations

import json
import re
import string
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "SECRET_NAME_ENDINGS",
    "add_secret_names",
    "is_secret_name",
    "only_references",
    "redact_processor",
    "redact_text",
    "redact_url",
    "redact_value",
    "remember_secrets",
    "remembered_secrets",
    "secret_values",
    "url_secrets",
]

MASK = "***"
MIN_SECRET_LENGTH = 4

# A name is secret when, ignoring case and "-"/"_", it ends with one of these.
SECRET_NAME_ENDINGS = (
    "password", "passwd", "pwd", "passphrase", "secret", "token", "api_key", "access_key",
    "private_key", "secret_key", "service_key", "subscription_key", "signature",
    "credential", "credentials", "authorization",
)  # fmt: skip
# In URL query strings "key" and "sig" are credentials (Google's ?key=, Azure's ?sig=), and
# so is any name ending in "_key"; in documents "key" is a step's key.
_QUERY_ONLY_NAMES = frozenset({"key", "sig"})

# Webhook services whose URL path is itself the credential.
_SECRET_PATH_HOSTS = frozenset({"hooks.slack.com"})

_LETTERS = frozenset(string.ascii_letters)
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
_URL_STOPS = frozenset("'\"<>`")
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_AUTH_SCHEMES = frozenset({"", "bearer", "basic", "token"})


class _Names:
    """The secret name endings in force: the built-in ones plus any added by settings."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.endings: tuple[str, ...] = tuple(_compact(n) for n in SECRET_NAME_ENDINGS)
        self.assignment = _assignment_pattern(SECRET_NAME_ENDINGS)
        self.words: tuple[str, ...] = SECRET_NAME_ENDINGS

    def add(self, names: Iterable[str]) -> None:
        with self.lock:
            new = [n.strip() for n in names if n.strip() and _compact(n) not in self.endings]
            if not new:
                return
            self.words = (*self.words, *new)
            self.endings = (*self.endings, *(_compact(n) for n in new))
            self.assignment = _assignment_pattern(self.words)


def _compact(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def _assignment_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """``name = value`` or ``"name": "value"`` where name ends with a secret word.

    The name starts at a word boundary and its prefix is bounded, so each position of the
    text is tried a bounded number of times: linear, never quadratic.
    """
    alternatives = "|".join(
        sorted(
            ("[_-]?".join(re.escape(c) for c in _compact(w)) for w in words),
            key=len,
            reverse=True,
        )
    )
    return re.compile(
        r"(?<![\w.-])((?i:[\w.-]{0,40}?(?:" + alternatives + r")))"
        r"""(["']?[ \t]*[:=][ \t]*)"""
        r"((?i:bearer|basic|token|digest)[ \t]+)?"
        r"""("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\$\{\w+\}|["']?[^\s"',;&<>()\[\]{}]+)"""
    )


_names = _Names()


def add_secret_names(names: Iterable[str]) -> None:
    """Treat names ending with any of ``names`` as secret too, for the rest of the process.

    Settings call it with ``STEPLINE_SECRET_NAMES``; names are compared ignoring case, "-"
    and "_".
    """
    _names.add(names)


def is_secret_name(name: object) -> bool:
    """Whether a key, param or field called ``name`` holds a secret (see module docs)."""
    if not isinstance(name, str):
        return False
    return _compact(name).endswith(_names.endings)


def _is_secret_query_name(name: str) -> bool:
    normalized = unquote(name).strip().lower().replace("-", "_")
    return (
        normalized in _QUERY_ONLY_NAMES or normalized.endswith("_key") or is_secret_name(normalized)
    )


# -- URLs ----------------------------------------------------------------------------------


def _redact_query(query: str, found: list[str]) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, value = part.partition("=")
        if sep and value and _is_secret_query_name(name):
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
    if (netloc, path, query, fragment) == (parts.netloc, parts.path, parts.query, parts.fragment):
        return url, []  # unchanged, and not normalised (sqlite:///x would lose a slash)
    redacted = urlunsplit((parts.scheme, netloc, path, query, fragment))
    return redacted, [secret for secret in found if secret and secret != MASK]


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


def _scan_urls(text: str, found: list[str] | None = None) -> str:
    """Apply redact_url to each ``scheme://rest`` in ``text``; collect secrets in ``found``.

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
        url = text[start:end]
        out.append(redact_url(url))
        if found is not None:
            found.extend(url_secrets(url))
        done = end
    out.append(text[done:])
    return "".join(out)


# -- text ----------------------------------------------------------------------------------


def only_references(value: str) -> bool:
    """Whether ``value`` holds no literal secret: only ${NAME} references (and a scheme)."""
    if not _ENV_REFERENCE.search(value):
        return False
    return _ENV_REFERENCE.sub("", value).strip().lower() in _AUTH_SCHEMES


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value.lstrip("\"'")


def _mask_assignment(match: re.Match[str]) -> str:
    name, separator, scheme, value = match.groups()
    inner = _unquoted(value)
    if inner == MASK or not inner or only_references(inner):
        return match.group(0)
    shown = f"{value[0]}{MASK}{value[0]}" if value[0] in "\"'" and len(value) > 1 else MASK
    return f"{name}{separator}{scheme or ''}{shown}"


def _variants(secret: str) -> set[str]:
    """How a secret may travel: as is, percent-, form-, JSON- or repr-encoded."""
    variants = {secret, quote(secret, safe=""), quote_plus(secret)}
    variants.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    variants.add(repr(secret)[1:-1])
    return variants


@lru_cache(maxsize=256)
def _value_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    candidates: set[str] = set()
    for secret in secrets:
        candidates |= _variants(secret)
    candidates = {c for c in candidates if len(c) >= MIN_SECRET_LENGTH}
    if not candidates:
        return None
    return re.compile(_trie_pattern(candidates))


def _trie_pattern(words: Iterable[str]) -> str:
    """One alternation of ``words`` sharing their prefixes (``ab(?:c|d)`` for abc, abd).

    A flat ``abc|abd|...`` is tried word by word at every position of the text: 1,000
    secrets cost 16 s per megabyte. Sharing prefixes, each position costs one comparison
    per distinct first character instead. The optional groups are greedy, so a secret
    that contains another (``abcd`` and ``abcdef``) is masked whole.
    """
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(c) + build(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


def _usable(secrets: Iterable[str]) -> frozenset[str]:
    return frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH)


class _Redactor:
    """The three rules with the value pattern compiled once, for many strings."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.values = _value_pattern(_usable(secrets))
        self.assignment = _names.assignment

    def text(self, text: str) -> str:
        if self.values is not None:
            text = self.values.sub(MASK, text)
        if "=" in text or ":" in text:
            text = self.assignment.sub(_mask_assignment, text)
        return _scan_urls(text) if "://" in text else text

    def value(self, value: Any, secret: bool = False) -> Any:
        if isinstance(value, str):
            return MASK if secret and not only_references(value) else self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v, secret or is_secret_name(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [self.value(item, secret) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
        if secret and isinstance(value, int | float) and not isinstance(value, bool):
            return MASK
        return value


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (4+ characters), each secret assignment and each
    URL's secret parts masked."""
    return _Redactor(secrets).text(text)


def redact_value(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like: dicts, lists, tuples, scalars) with :func:`redact_text` applied to
    every string and every value under a secret name masked whole (``${NAME}`` references
    are kept, so a document shown and sent back still refers to the same variable)."""
    return _Redactor(secrets).value(value)


def secret_values(value: Any, *, secret: bool = False) -> list[str]:
    """The secret values inside ``value`` (an instance's params, a document's params).

    The values under secret names, and in every string the passwords and tokens of URLs
    and of assignments such as ``Pwd=...;`` in a connection string.
    """
    found: list[str] = []
    _collect(value, secret, found)
    return [s for s in dict.fromkeys(found) if s != MASK]


def _collect(value: Any, secret: bool, found: list[str]) -> None:
    if isinstance(value, str):
        if secret and not only_references(value):
            found.append(value)
        if "://" in value:
            _scan_urls(value, found)
        if "=" in value or ":" in value:
            for match in _names.assignment.finditer(value):
                inner = _unquoted(match.group(4))
                if inner and not only_references(inner):
                    found.append(inner)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _collect(item, secret or is_secret_name(key), found)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, secret, found)
    elif secret and isinstance(value, int | float) and not isinstance(value, bool):
        found.append(str(value))


# -- what this process has seen, for its logs ------------------------------------------------


class _Remembered:
    """The most recent secret values this process handled (bounded), for its log lines.

    A runner's log line carries no list of secrets; the engine remembers an instance's secret
    params when it builds a step's context, and the log processor masks them all.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.values: dict[str, None] = {}
        self.snapshot: tuple[str, ...] = ()

    def add(self, values: Iterable[str]) -> None:
        new = [v for v in values if len(v) >= MIN_SECRET_LENGTH and v not in self.values]
        if not new:
            return
        with self.lock:
            for v in new:
                self.values[v] = None
            while len(self.values) > self.capacity:
                del self.values[next(iter(self.values))]
            self.snapshot = tuple(self.values)


_remembered = _Remembered()


def remember_secrets(values: Iterable[str]) -> None:
    """Mask ``values`` in every log line of this process from now on (the last 256 kept)."""
    _remembered.add(values)


def remembered_secrets() -> tuple[str, ...]:
    """The values :func:`remember_secrets` was given (most recent 256)."""
    return _remembered.snapshot


def redact_processor(secrets_provider: Callable[[], Iterable[str]]) -> Processor:
    """Build a structlog processor that applies :func:`redact_value` to the event's fields.

    Masks the provider's secrets and the remembered ones in every string, and every field
    with a secret name (``params={'password': ...}``, ``api_key=...``). Place it after
    ``format_exc_info`` so that rendered tracebacks are redacted too.
    """

    def processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        redactor = _Redactor([*secrets_provider(), *_remembered.snapshot])
        return {
            key: redactor.value(value, is_secret_name(key)) for key, value in event_dict.items()
        }

    return processor
