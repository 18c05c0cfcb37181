from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from stepline.redact import redact_processor, redact_text, redact_url, url_secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:hunter22@db:5432/prod", "postgresql://app:***@db:5432/prod"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("https://user@example.com/path", "https://user@example.com/path"),
        ("https://example.com/a?b=1", "https://example.com/a?b=1"),
    ],
)
def test_redact_url_masks_only_the_userinfo_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "key",
    [
        "key",
        "apikey",
        "api_key",
        "API-Key",
        "token",
        "access_token",
        "secret",
        "password",
        "passwd",
        "serviceKey",
        "signature",
        "sig",
        "client_secret",
        "X-Amz-Signature",
    ],
)
def test_redact_url_masks_secret_query_values(key: str) -> None:
    url = f"https://api.example.com/v1/stats?period=WEEK&{key}=abc123XYZ&page=2"

    assert redact_url(url) == f"https://api.example.com/v1/stats?period=WEEK&{key}=***&page=2"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/x?keyboard=yes&page=2#top",
        "https://example.com/x?monkey=1&tokens_left=3",
        "https://example.com/x?token=&page=2",
    ],
)
def test_redact_url_keeps_harmless_query_values(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_masks_tokens_in_the_fragment() -> None:
    url = "https://app.example.com/cb#access_token=abcdef123&state=x"

    assert redact_url(url) == "https://app.example.com/cb#access_token=***&state=x"


def test_redact_url_masks_the_path_of_slack_webhooks() -> None:
    url = "https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"

    assert redact_url(url) == "https://hooks.slack.com/services/***"
    assert set(url_secrets(url)) == {"T0001/B0002/XXXXXXXXXXXXXXXXXXXXXXXX"}


def test_redact_url_hides_an_unparseable_url_entirely() -> None:
    assert redact_url("http://[::1:8080/?token=abcdef") == "***"


def test_url_secrets_lists_raw_and_decoded_values() -> None:
    secrets = url_secrets("https://u:p%40ss@h/?token=a%2Fb12&x=1")

    assert {"p%40ss", "p@ss", "a%2Fb12", "a/b12"} <= set(secrets)
    assert "1" not in secrets


def test_redact_text_masks_each_secret_everywhere() -> None:
    text = "login as admin with hunter22 failed; retrying hunter22 (hunter22)"

    assert redact_text(text, ["hunter22"]) == "login as admin with *** failed; retrying *** (***)"


def test_redact_text_ignores_short_and_empty_secrets() -> None:
    assert redact_text("a b abc", ["", "a", "abc"]) == "a b abc"


def test_redact_text_masks_longer_secret_before_its_prefix() -> None:
    assert redact_text("key=abcd-efgh", ["abcd", "abcd-efgh"]) == "key=***"


def test_redact_text_masks_url_encoded_secrets() -> None:
    secret = "p@ss: w0rd"

    assert redact_text("a=p%40ss%3A%20w0rd b=p%40ss%3A+w0rd", [secret]) == "a=*** b=***"


def test_redact_text_redacts_urls_without_being_told_the_secret() -> None:
    text = "GET 'https://api.example.com/v1?serviceKey=ZZZ999&page=1' failed: 500"

    redacted = redact_text(text, [])

    assert "ZZZ999" not in redacted
    assert "'https://api.example.com/v1?serviceKey=***&page=1' failed: 500" in redacted


def test_redact_processor_redacts_every_string_value() -> None:
    processor = redact_processor(lambda: ["tok-12345"])
    event = {
        "event": "call failed with tok-12345",
        "url": "https://x.example/?token=tok-12345",
        "nested": {"headers": ["Bearer tok-12345"], "count": 3},
        "pair": ("tok-12345", None),
        "attempt": 2,
    }

    result = processor(None, "info", event)

    assert result == {
        "event": "call failed with ***",
        "url": "https://x.example/?token=***",
        "nested": {"headers": ["Bearer ***"], "count": 3},
        "pair": ("***", None),
        "attempt": 2,
    }


def test_redact_processor_asks_the_provider_on_every_event() -> None:
    current: list[str] = []
    processor = redact_processor(lambda: current)

    with capture_logs(processors=[processor]) as logs:
        structlog.get_logger().info("first", value="pw-0001")
        current.append("pw-0001")
        structlog.get_logger().info("second", value="pw-0001")

    assert [entry["value"] for entry in logs] == ["pw-0001", "***"]
