"""Redaction of API answers: linear in the text's length (a megabyte in milliseconds, where a
URL regular expression took minutes), and secrets in documents and payloads are masked."""

from __future__ import annotations

import time

import pytest

from stepline.api.views import redact_document, redact_value
from stepline.redact import redact_text


@pytest.mark.parametrize("text", ["x" * 1_000_000, "ab1" * 300_000 + " http://h/?token=t"])
def test_a_megabyte_takes_well_under_a_second(text: str) -> None:
    started = time.perf_counter()
    redact_text(text, ["s3cr3t"])
    assert time.perf_counter() - started < 1.0


def test_secret_named_values_are_masked_but_env_references_and_step_keys_are_kept() -> None:
    value = {
        "password": "hunter22",
        "api_key": "k-123456",
        "client_secret": "${CLIENT_SECRET}",
        "key": "collect_stats",
        "nested": [{"access_token": "abcdef"}],
        "note": "call https://u:pw@h/x",
    }
    assert redact_value(value, []) == {
        "password": "***",
        "api_key": "***",
        "client_secret": "${CLIENT_SECRET}",
        "key": "collect_stats",
        "nested": [{"access_token": "***"}],
        "note": "call https://u:***@h/x",
    }


def test_alert_credentials_are_masked_in_documents() -> None:
    document = {
        "name": "weekly",
        "alerts": [
            {"type": "webhook", "url": "https://h/x?sig=abcd", "headers": {"X-Auth": "t0k3n"}},
            {"type": "webhook", "url": "https://h/y", "headers": {"Authorization": "Bearer ${T}"}},
            {"type": "email", "host": "smtp", "username": "me", "password": "p4ssw0rd"},
        ],
        "steps": [{"key": "a", "runner": "m:f", "with": {"dsn": "mysql://u:dbpass1@h/db"}}],
    }
    redacted = redact_document(document, ["dbpass1"])
    assert redacted["alerts"][0] == {
        "type": "webhook",
        "url": "https://h/x?sig=***",
        "headers": {"X-Auth": "***"},
    }
    assert redacted["alerts"][1]["headers"] == {"Authorization": "Bearer ${T}"}
    assert redacted["alerts"][2]["password"] == "***"
    assert redacted["steps"][0]["with"]["dsn"] == "mysql://u:***@h/db"
    assert "t0k3n" not in str(redacted) and "p4ssw0rd" not in str(redacted)
