"""Alerts as a JSON POST, in the shape Slack-compatible incoming webhooks accept."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from stepline.notifiers.base import Alert, Notifier, NotifyError
from stepline.redact import redact_text, redact_url, url_secrets

__all__ = ["WebhookNotifier"]

_MAX_BODY_CHARS = 200


class WebhookNotifier(Notifier):
    def __init__(
        self, url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"webhook url must start with http:// or https://: {redact_url(url)}")
        if timeout <= 0:
            raise ValueError(f"webhook timeout must be positive, got {timeout}")
        self._url = url
        self._timeout = timeout
        self._headers = dict(headers or {})
        # Header values are usually credentials (Authorization, X-Api-Key).
        self._secrets = [*url_secrets(url), *self._headers.values()]

    def __repr__(self) -> str:
        return f"WebhookNotifier(url={redact_url(self._url)!r}, timeout={self._timeout})"

    def send(self, alert: Alert) -> None:
        self.send_message(
            alert.text(),
            {
                "batch": alert.batch,
                "instance_id": alert.instance_id,
                "status": alert.status,
                "failed_steps": list(alert.failed_steps),
                "error": alert.error,
                "link": alert.link,
            },
        )

    def send_message(self, text: str, payload: Mapping[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"text": text}
        body.update((key, value) for key, value in (payload or {}).items() if key != "text")
        response = self._post(body)
        if not response.is_success:
            detail = self._safe(response.text[:_MAX_BODY_CHARS].strip())
            suffix = f": {detail}" if detail else ""
            raise NotifyError(f"webhook answered HTTP {response.status_code}{suffix}")

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        try:
            with httpx.Client(timeout=self._timeout, headers=self._headers) as client:
                try:
                    return client.post(self._url, json=body)
                except httpx.ConnectError:
                    # A refused or reset connection fails fast, so one retry stays in budget;
                    # a connect *timeout* is not retried, because that would double the wait.
                    return client.post(self._url, json=body)
        except httpx.TimeoutException:
            raise NotifyError(f"webhook timed out after {self._timeout}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # `from None`: httpx exceptions carry the request, and with it the full URL.
            reason = self._safe(str(exc)) or "no detail"
            raise NotifyError(f"webhook request failed ({type(exc).__name__}: {reason})") from None

    def _safe(self, text: str) -> str:
        return redact_text(text, self._secrets)
