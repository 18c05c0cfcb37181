"""Stored records as API responses, with every secret masked (SPEC guarantee 7).

Redaction happens here, once, on the way out: responses carry definitions, params, step
results and error texts, any of which may hold a password or a URL with a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stepline.api.models import (
    BatchDetail,
    BatchSummary,
    InstanceDetail,
    InstanceOut,
    StepResultOut,
)
from stepline.redact import MASK, SECRET_QUERY_KEYS, redact_text, redact_url
from stepline.stores.base import InstanceRecord, StepResultRecord, StoredDefinition

__all__ = [
    "batch_detail",
    "batch_summary",
    "instance_detail",
    "instance_out",
    "redact_document",
    "redact_value",
]

# "${NAME}" is resolved from the server's environment when an alert is sent: it names a
# secret without holding it, so it is shown as is (and a GET -> PUT round trip keeps it).
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_AUTH_SCHEMES = frozenset({"", "bearer", "basic", "token"})
# The names stepline.redact masks in URL queries (refresh_token, client_secret, ...), less
# "key": in a document it is a step's key far more often than a credential.
_SECRET_NAMES = SECRET_QUERY_KEYS - {"key"}
_SECRET_NAME_SUFFIXES = ("_key", "_token", "_secret", "_password", "_signature")


def _is_secret_name(name: object) -> bool:
    if not isinstance(name, str):
        return False
    normalized = name.strip().lower().replace("-", "_")
    return normalized in _SECRET_NAMES or normalized.endswith(_SECRET_NAME_SUFFIXES)


def redact_value(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` with :func:`redact_text` applied to every string inside it, and the text
    under a secret-looking key (password, token, api_key, ...) masked whole."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {
            key: MASK
            if isinstance(item, str) and _is_secret_name(key) and not _only_references(item)
            else redact_value(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item, secrets) for item in value]
    return value


def _only_references(value: Any) -> bool:
    """Whether ``value`` holds no literal secret: only ${NAME} references (and a scheme)."""
    if not isinstance(value, str) or not _ENV_REFERENCE.search(value):
        return False
    return _ENV_REFERENCE.sub("", value).strip().lower() in _AUTH_SCHEMES


def _redact_alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(alert)
    if isinstance(out.get("url"), str):
        out["url"] = redact_url(out["url"])
    if "password" in out and not _only_references(out["password"]):
        out["password"] = MASK
    headers = out.get("headers")
    if isinstance(headers, Mapping):
        # Headers of a webhook are how it authenticates: masked unless they only refer.
        out["headers"] = {k: v if _only_references(v) else MASK for k, v in headers.items()}
    return out


def redact_document(document: Mapping[str, Any], secrets: Sequence[str]) -> dict[str, Any]:
    """A definition document with alert credentials and every known secret masked."""
    out = dict(document)
    alerts = out.get("alerts")
    if isinstance(alerts, list):
        out["alerts"] = [_redact_alert(a) if isinstance(a, Mapping) else a for a in alerts]
    redacted: dict[str, Any] = redact_value(out, secrets)
    return redacted


def batch_summary(stored: StoredDefinition) -> BatchSummary:
    definition = stored.definition
    return BatchSummary(
        name=stored.name,
        version=stored.version,
        cron=definition.cron,
        timezone=definition.timezone,
        step_count=len(definition.steps),
        max_active_instances=definition.max_active_instances,
        updated_at=stored.updated_at,
        paused=stored.paused,
    )


def batch_detail(stored: StoredDefinition, secrets: Sequence[str]) -> BatchDetail:
    return BatchDetail(
        name=stored.name,
        version=stored.version,
        document=redact_document(stored.definition.to_document(), secrets),
        created_at=stored.created_at,
        updated_at=stored.updated_at,
    )


def _redact_error(error: str | None, secrets: Sequence[str]) -> str | None:
    return None if error is None else redact_text(error, secrets)


def _instance_fields(instance: InstanceRecord, secrets: Sequence[str]) -> dict[str, Any]:
    return {
        "id": instance.id,
        "batch": instance.batch,
        "definition_version": instance.definition_version,
        "status": instance.status,
        "params": redact_value(dict(instance.params), secrets),
        "trigger": instance.trigger,
        "scheduled_for": instance.scheduled_for,
        "created_at": instance.created_at,
        "started_at": instance.started_at,
        "finished_at": instance.finished_at,
        "error": _redact_error(instance.error, secrets),
        "cancel_requested": instance.cancel_requested,
    }


def instance_out(instance: InstanceRecord, secrets: Sequence[str]) -> InstanceOut:
    return InstanceOut(**_instance_fields(instance, secrets))


def instance_detail(
    instance: InstanceRecord, steps: Iterable[StepResultRecord], secrets: Sequence[str]
) -> InstanceDetail:
    return InstanceDetail(
        **_instance_fields(instance, secrets),
        steps=[
            StepResultOut(
                key=r.step_key,
                map_index=r.map_index,
                status=r.status,
                attempt=r.attempt,
                result_payload=redact_value(r.result_payload, secrets),
                error=_redact_error(r.error, secrets),
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in steps
        ],
    )
