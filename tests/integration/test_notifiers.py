"""Notifiers against real local servers: an HTTP server, a silent socket and an SMTP server."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs

from stepline.notifiers import (
    Alert,
    Notifier,
    NotifyError,
    SmtpNotifier,
    WebhookNotifier,
    notifier_from_config,
    notify_all,
)

TOKEN = "tok-5ecret-9f8e7d"
SMTP_USER = "alerts"
SMTP_PASSWORD = "pw-5ecret-1a2b3c"

ALERT = Alert(
    batch="weekly_report",
    instance_id=42,
    status="failed",
    failed_steps=("collect_weather", "check"),
    error="HTTPError: weather API answered 503",
    inspect_hint="stepline show 42",
)


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that completes TCP handshakes (via the backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port: int = listener.getsockname()[1]
        yield port


class StoringHandler:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    accepted = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    # handled=False: let aiosmtpd answer 535 itself rather than stay silent.
    return AuthResult(success=accepted, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, StoringHandler]]:
    handler = StoringHandler()
    port = free_port()
    # AUTH over plain TCP is only acceptable because this server is loopback-only.
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()


def assert_secret_free(secret: str, *texts: object) -> None:
    for text in texts:
        assert secret not in repr(text)


# --- Alert -----------------------------------------------------------------------------------


def test_alert_text_names_batch_instance_steps_error_and_how_to_inspect() -> None:
    text = ALERT.text()

    assert "weekly_report" in text
    assert "42" in text
    assert "failed" in text
    assert "collect_weather, check" in text
    assert "weather API answered 503" in text
    assert "stepline show 42" in text


def test_alert_text_truncates_long_errors_and_redacts_urls() -> None:
    alert = Alert(
        batch="b",
        instance_id=1,
        status="failed",
        failed_steps=("s",),
        error=f"GET https://api.example/x?serviceKey={TOKEN} failed " + "x" * 5000,
        inspect_hint="stepline show 1",
    )

    text = alert.text()

    assert len(text) < 1300
    assert TOKEN not in text
    assert "more characters" in text


# --- Webhook ---------------------------------------------------------------------------------


def test_webhook_posts_the_alert_as_json(httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request(
        "/hook", method="POST", query_string={"token": TOKEN}
    ).respond_with_json({"ok": True})
    notifier = WebhookNotifier(httpserver.url_for(f"/hook?token={TOKEN}"), timeout=2)

    notifier.send(ALERT)

    httpserver.check_assertions()
    request = httpserver.log[0][0]
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.get_data()) == {
        "text": ALERT.text(),
        "batch": "weekly_report",
        "instance_id": 42,
        "status": "failed",
        "failed_steps": ["collect_weather", "check"],
        "error": "HTTPError: weather API answered 503",
        "link": None,
    }


def test_webhook_send_message_sends_text_payload_and_headers(httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request(
        "/msg", method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
    ).respond_with_data("ok")
    notifier = WebhookNotifier(
        httpserver.url_for("/msg"), headers={"Authorization": f"Bearer {TOKEN}"}
    )

    notifier.send_message("report ready", {"rows": 3, "text": "ignored"})

    httpserver.check_assertions()
    assert json.loads(httpserver.log[0][0].get_data()) == {"text": "report ready", "rows": 3}
    assert_secret_free(TOKEN, notifier)


def test_webhook_error_status_raises_without_the_secret(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("boom", status=500)
    notifier = WebhookNotifier(httpserver.url_for(f"/hook?token={TOKEN}"))

    with pytest.raises(NotifyError, match="500") as raised:
        notifier.send(ALERT)

    assert "boom" in str(raised.value)
    assert_secret_free(TOKEN, str(raised.value), notifier)
    assert "token=***" in repr(notifier)


def test_notify_all_reports_a_failing_webhook_and_does_not_raise(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("boom", status=500)
    notifier = WebhookNotifier(httpserver.url_for(f"/hook?token={TOKEN}"))

    with capture_logs() as logs:
        errors = notify_all([notifier], ALERT)

    assert len(errors) == 1
    assert "HTTP 500" in errors[0]
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [("alert_failed", "warning")]
    assert logs[0]["notifier"] == repr(notifier)
    assert_secret_free(TOKEN, errors, logs)


def test_webhook_that_is_down_fails_fast() -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook?token={TOKEN}", timeout=5)
    started = time.monotonic()

    with capture_logs() as logs:
        errors = notify_all([notifier], ALERT)
    with pytest.raises(NotifyError, match="ConnectError") as raised:
        notifier.send(ALERT)

    assert time.monotonic() - started < 2
    assert len(errors) == 1
    assert_secret_free(TOKEN, str(raised.value), errors, logs)


def test_webhook_that_hangs_times_out(silent_port: int) -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{silent_port}/hook?token={TOKEN}", timeout=0.5)
    started = time.monotonic()

    with capture_logs() as logs:
        errors = notify_all([notifier], ALERT)

    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5
    assert len(errors) == 1
    assert "timed out after 0.5s" in errors[0]
    assert_secret_free(TOKEN, errors, logs)


def test_notify_all_survives_any_exception_and_sends_to_the_rest(httpserver: HTTPServer) -> None:
    class BrokenNotifier(Notifier):
        def send(self, alert: Alert) -> None:
            raise RuntimeError(f"cannot reach https://api.example/?token={TOKEN}")

        def __repr__(self) -> str:
            return "BrokenNotifier()"

    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_json({"ok": True})

    with capture_logs() as logs:
        errors = notify_all([BrokenNotifier(), WebhookNotifier(httpserver.url_for("/hook"))], ALERT)

    httpserver.check_assertions()
    assert errors == ["BrokenNotifier(): RuntimeError: cannot reach https://api.example/?token=***"]
    assert [entry["event"] for entry in logs] == ["alert_failed", "alert_sent"]
    assert_secret_free(TOKEN, logs)


# --- E-mail ----------------------------------------------------------------------------------


def test_email_is_delivered_with_subject_body_and_recipients(
    smtp_server: tuple[int, StoringHandler],
) -> None:
    port, handler = smtp_server
    notifier = SmtpNotifier(
        "127.0.0.1",
        port,
        sender="stepline@example.com",
        recipients=["admin@example.com", "oncall@example.com"],
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        timeout=5,
    )

    notifier.send(ALERT)

    [envelope] = handler.envelopes
    assert envelope.mail_from == "stepline@example.com"
    assert envelope.rcpt_tos == ["admin@example.com", "oncall@example.com"]
    assert isinstance(envelope.content, bytes)
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "[stepline] weekly_report instance 42 failed"
    assert message["To"] == "admin@example.com, oncall@example.com"
    body = message.get_content()
    assert "collect_weather, check" in body
    assert "stepline show 42" in body
    assert_secret_free(SMTP_PASSWORD, notifier)


def test_email_send_message_without_authentication(
    smtp_server: tuple[int, StoringHandler],
) -> None:
    port, handler = smtp_server
    notifier = SmtpNotifier("127.0.0.1", port, sender="s@example.com", recipients=["r@example.com"])

    notifier.send_message("weekly report ready", "3 farms, 0 errors")

    [envelope] = handler.envelopes
    assert isinstance(envelope.content, bytes)
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "weekly report ready"
    assert message.get_content().strip() == "3 farms, 0 errors"


def test_email_with_a_wrong_password_fails_without_the_password(
    smtp_server: tuple[int, StoringHandler],
) -> None:
    port, handler = smtp_server
    notifier = SmtpNotifier(
        "127.0.0.1",
        port,
        sender="s@example.com",
        recipients=["r@example.com"],
        username=SMTP_USER,
        password=SMTP_PASSWORD + "-wrong",
        timeout=5,
    )

    with capture_logs() as logs:
        errors = notify_all([notifier], ALERT)

    assert handler.envelopes == []
    assert len(errors) == 1
    assert "authentication failed (code 535)" in errors[0]
    assert_secret_free(SMTP_PASSWORD, errors, logs, notifier)


def test_email_server_down_raises_notify_error_without_the_password() -> None:
    notifier = SmtpNotifier(
        "127.0.0.1",
        free_port(),
        sender="s@example.com",
        recipients=["r@example.com"],
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        timeout=2,
    )
    started = time.monotonic()

    with pytest.raises(NotifyError, match="ConnectionRefusedError") as raised:
        notifier.send(ALERT)
    with capture_logs() as logs:
        errors = notify_all([notifier], ALERT)

    assert time.monotonic() - started < 2
    assert len(errors) == 1
    assert_secret_free(SMTP_PASSWORD, str(raised.value), errors, logs, notifier)


def test_email_server_that_hangs_times_out(silent_port: int) -> None:
    notifier = SmtpNotifier(
        "127.0.0.1",
        silent_port,
        sender="s@example.com",
        recipients=["r@example.com"],
        username=SMTP_USER,
        password=SMTP_PASSWORD,
        timeout=0.5,
    )
    started = time.monotonic()

    with capture_logs() as logs:
        errors = notify_all([notifier], ALERT)

    assert 0.4 < time.monotonic() - started < 1.5
    assert len(errors) == 1
    assert "smtp delivery failed" in errors[0]
    assert_secret_free(SMTP_PASSWORD, errors, logs)


# --- Configuration ---------------------------------------------------------------------------


def test_webhook_from_config_reads_secrets_from_the_environment() -> None:
    notifier = notifier_from_config(
        {
            "type": "webhook",
            "url": "https://hooks.slack.com/services/${SLACK_PATH}",
            "timeout": "3s",
        },
        environ={"SLACK_PATH": "T1/B2/" + TOKEN},
    )

    assert isinstance(notifier, WebhookNotifier)
    assert repr(notifier) == (
        "WebhookNotifier(url='https://hooks.slack.com/services/***', timeout=3.0)"
    )


def test_email_from_config_with_defaults_and_environment() -> None:
    notifier = notifier_from_config(
        {
            "type": "email",
            "host": "smtp.example.com",
            "from": "stepline@example.com",
            "to": ["${ADMINS}"],
            "username": "alerts",
            "password": "${SMTP_PASSWORD}",
            "starttls": True,
            "timeout": 7,
        },
        environ={"ADMINS": "a@example.com, b@example.com", "SMTP_PASSWORD": SMTP_PASSWORD},
    )

    assert isinstance(notifier, SmtpNotifier)
    assert repr(notifier) == (
        "SmtpNotifier(host='smtp.example.com', port=587, sender='stepline@example.com', "
        "recipients=['a@example.com', 'b@example.com'], username='alerts', "
        "security='starttls', timeout=7.0)"
    )


@pytest.mark.parametrize(
    ("timeout", "seconds"), [("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("5s", 5.0), (2, 2.0)]
)
def test_alert_timeouts_read_like_step_timeouts(timeout: object, seconds: float) -> None:
    """One duration parser everywhere: what a step's ``timeout:`` accepts, an alert does."""
    webhook = notifier_from_config({"type": "webhook", "url": "https://x", "timeout": timeout})
    email = notifier_from_config(
        {"type": "email", "host": "h", "from": "a@x", "to": ["b@x"], "timeout": timeout}
    )

    assert f"timeout={seconds}" in repr(webhook)
    assert f"timeout={seconds})" in repr(email)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "pager"}, "alert type 'pager' is unknown"),
        ({"url": "https://x"}, "missing required field 'type'"),
        ({"type": "webhook"}, "missing required field 'url'"),
        ({"type": "webhook", "url": "ftp://x"}, "must start with http"),
        ({"type": "webhook", "url": "https://x", "timeout": "soon"}, "field 'timeout'"),
        ({"type": "webhook", "url": "https://x", "timeout": 0}, "field 'timeout'"),
        ({"type": "webhook", "url": "https://x", "timeout": "1x"}, "use e.g. 500ms, 30s, 10m"),
        ({"type": "webhook", "url": "https://x", "retries": 3}, "unknown field(s) retries"),
        ({"type": "email", "from": "a@x", "to": ["b@x"]}, "missing required field 'host'"),
        ({"type": "email", "host": "h", "to": ["b@x"]}, "missing required field 'from'"),
        ({"type": "email", "host": "h", "from": "a@x"}, "field 'to'"),
        ({"type": "email", "host": "h", "from": "a@x", "to": []}, "missing required field 'to'"),
        (
            {"type": "email", "host": "h", "from": "a@x", "to": ["b@x"], "port": "smtp"},
            "field 'port' must be an integer",
        ),
        (
            {"type": "email", "host": "h", "from": "a@x", "to": "b@x", "password": "${NOPE}"},
            "field 'password' references ${NOPE}, but the environment variable NOPE is not set",
        ),
    ],
)
def test_invalid_config_names_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        notifier_from_config(config, environ={})

    assert message in str(raised.value)
