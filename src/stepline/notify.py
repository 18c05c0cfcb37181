"""Built-in notification runners: a message to a webhook or by e-mail, as a step.

They reuse the senders of batch-level ``alerts:`` (:mod:`stepline.notifiers`) and their
configuration rules, including ``${NAME}`` references to environment variables, so a URL
or password never has to be written into a stored definition::

    - key: alert_admin
      runner: stepline.notify:webhook
      trigger_rule: one_failed
      with: {url: "${WEEKLY_ALERT_WEBHOOK_URL}"}

    - key: mail_admin
      runner: stepline.notify:email
      trigger_rule: one_failed
      with: {host: smtp.example.com, port: 587, starttls: true, from: batch@example.com,
             to: ["${ADMIN_EMAIL}"], username: batch, password: "${SMTP_PASSWORD}"}

Without ``text``/``body`` the message says which batch instance needs attention, which
upstream steps completed, and how to inspect and resume it. A message that cannot be
delivered fails the step (with the destination masked), so the step's ``retry:`` applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepline.core.context import DoNotRetry, StepContext
from stepline.notifiers import SmtpNotifier, WebhookNotifier, notifier_from_config

__all__ = ["default_message", "email", "webhook"]

_WEBHOOK_SENDER = frozenset({"url", "timeout", "headers"})
_EMAIL_SENDER = frozenset(
    {"host", "port", "from", "to", "username", "password", "starttls", "ssl", "timeout"}
)


def default_message(ctx: StepContext) -> tuple[str, str]:
    """(subject, text) describing the instance ``ctx`` belongs to, for a failure handler.

    The context holds only the results of upstream steps that succeeded, so the text lists
    those and points to ``stepline show`` for the failed ones.
    """
    subject = f"[stepline] {ctx.batch} instance {ctx.instance_id} needs attention"
    completed = ", ".join(sorted(str(key) for key in ctx.results)) or "none"
    text = "\n".join(
        [
            subject,
            f"Step {ctx.step!r} was triggered because an upstream step did not succeed.",
            f"Upstream steps with results: {completed}",
            f"Inspect: stepline show {ctx.instance_id}   "
            f"(resume: stepline retry {ctx.instance_id})",
        ]
    )
    return subject, text


def webhook(ctx: StepContext) -> dict[str, Any]:
    """POST ``{"text": ..., "batch", "instance_id", "step", ...payload}`` to ``with.url``.

    ``with``: ``url`` (required; ``${NAME}`` reads the environment), ``text`` (default:
    :func:`default_message`), ``payload`` (extra JSON fields), ``headers``, ``timeout``
    (default 5 s). Returns ``{"sent": true, "to": <masked url>}``. A configuration error
    fails at once (DoNotRetry); a delivery error raises NotifyError (retryable).
    """
    args = ctx.args
    _reject_unknown(args, _WEBHOOK_SENDER | {"text", "payload"}, "webhook")
    config = {"type": "webhook", **{k: v for k, v in args.items() if k in _WEBHOOK_SENDER}}
    notifier = _build(config, "webhook")
    assert isinstance(notifier, WebhookNotifier)
    text = args.get("text") or default_message(ctx)[1]
    payload = args.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise DoNotRetry("stepline.notify:webhook: 'payload' must be a mapping")
    body = {"batch": ctx.batch, "instance_id": ctx.instance_id, "step": ctx.step, **payload}
    notifier.send_message(str(text), body)
    ctx.log.info("webhook message sent", notifier=repr(notifier))
    return {"sent": True, "to": repr(notifier)}


def email(ctx: StepContext) -> dict[str, Any]:
    """Send a plain-text e-mail through an SMTP relay.

    ``with``: ``host``, ``from``, ``to`` (an address or a list; each may hold several,
    comma-separated) — required; ``port`` (25, or 587/465 with starttls/ssl), ``username``,
    ``password``, ``starttls``, ``ssl``, ``timeout`` (10 s), ``subject`` and ``body``
    (default: :func:`default_message`). ``${NAME}`` reads the environment. Returns
    ``{"sent": true, "to": [...]}``.
    """
    args = ctx.args
    _reject_unknown(args, _EMAIL_SENDER | {"subject", "body"}, "email")
    config = {"type": "email", **{k: v for k, v in args.items() if k in _EMAIL_SENDER}}
    notifier = _build(config, "email")
    assert isinstance(notifier, SmtpNotifier)
    subject, body = default_message(ctx)
    notifier.send_message(str(args.get("subject") or subject), str(args.get("body") or body))
    ctx.log.info("e-mail sent", notifier=repr(notifier))
    recipients = args.get("to")
    return {"sent": True, "to": recipients if isinstance(recipients, list) else [recipients]}


def _build(config: Mapping[str, Any], kind: str) -> Any:
    try:
        return notifier_from_config(config)
    except ValueError as exc:
        # Messages of notifier_from_config never echo secret values.
        raise DoNotRetry(f"stepline.notify:{kind}: {exc}") from None


def _reject_unknown(args: Mapping[str, Any], allowed: frozenset[str], kind: str) -> None:
    unknown = sorted(str(k) for k in args if k not in allowed)
    if unknown:
        raise DoNotRetry(
            f"stepline.notify:{kind}: unknown argument(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
