from __future__ import annotations

import json

import pytest
import structlog
from structlog.testing import capture_logs

from stepline.redact import (
    MIN_SECRET_LENGTH,
    add_secret_names,
    is_secret_name,
    redact_processor,
    redact_text,
    redact_url,
    redact_value,
    remember_secrets,
    remembered_secrets,
    secret_values,
    url_secrets,
)


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


# -- secret names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "password", "db_password", "DB-Password", "passwd", "pwd", "secret", "client_secret",
        "clientSecret", "token", "access_token", "refresh-token", "api_key", "apiKey",
        "X-Api-Key", "serviceKey", "private_key", "signature", "credentials", "Authorization",
        "passphrase",
    ],
)  # fmt: skip
def test_secret_names_are_recognised_whatever_their_case_and_separators(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["key", "step_key", "monkey", "tokens_left", "password_hint", "author", "period", 3]
)
def test_ordinary_names_are_not_secret(name: object) -> None:
    assert not is_secret_name(name)


def test_more_names_can_be_marked_secret() -> None:
    assert not is_secret_name("licence_code_zq")
    add_secret_names(["licence-code-zq"])
    assert is_secret_name("licence_code_zq") and is_secret_name("MyLicenceCodeZq")
    assert redact_text("licence_code_zq=ABCD-1234", []) == "licence_code_zq=***"


# -- assignments in text --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login password=hunter22 failed", "login password=*** failed"),
        ('{"api_key": "abc def 123", "n": 1}', '{"api_key": "***", "n": 1}'),
        ("{'password': 'it''s', 'user': 'me'}", "{'password': '***''s', 'user': 'me'}"),
        (
            "Driver={ODBC};Server=db;Uid=app;Pwd=s3cr3tPwd;",
            "Driver={ODBC};Server=db;Uid=app;Pwd=***;",
        ),
        ("host=db user=app password=pg-pass-1 dbname=x", "host=db user=app password=*** dbname=x"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer ***"),
        ("X-Api-Key: k-778899", "X-Api-Key: ***"),
        ("client_secret = 'abc'", "client_secret = '***'"),
    ],
)
def test_values_assigned_to_secret_names_are_masked(text: str, expected: str) -> None:
    assert redact_text(text, []) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"key": "collect_stats", "tokens_left": 3}',
        "FATAL: password authentication failed for user app",
        "password: ${DB_PASSWORD}",
        "Authorization: Bearer ${API_TOKEN}",
        "sqlite:///var/lib/stepline.db",
        "password=",
    ],
)
def test_text_without_a_secret_is_kept(text: str) -> None:
    assert redact_text(text, []) == text


# -- known values --------------------------------------------------------------------------


def test_a_known_value_is_masked_under_any_key_and_in_any_message() -> None:
    secrets = ["hunter22"]
    value = {"plain": "hunter22", "note": ["ran with hunter22"], "n": 1}
    assert redact_value(value, secrets) == {"plain": "***", "note": ["ran with ***"], "n": 1}


def test_a_known_value_is_masked_json_and_repr_encoded() -> None:
    secret = 'pa"ss\\w0rd'
    encoded = json.dumps({"x": secret})
    assert secret not in redact_text(secret, [secret])
    assert redact_text(encoded, [secret]) == '{"x": "***"}'
    assert redact_text(repr({"x": "it's-" + secret}), ["it's-" + secret]) == "{'x': '***'}"


def test_short_values_are_not_matched_as_text_but_are_masked_under_a_secret_name() -> None:
    # Masking every "abc" in the output would hide nothing and wreck it: see MIN_SECRET_LENGTH.
    assert MIN_SECRET_LENGTH == 4
    assert redact_value({"password": "abc", "note": "abc"}, ["abc"]) == {
        "password": "***",
        "note": "abc",
    }


def test_numbers_and_lists_under_a_secret_name_are_masked_and_references_kept() -> None:
    value = {"pin_password": 12345678, "tokens": {"api_token": ["t-1", "t-2"]}, "flag": True}
    assert redact_value(value, []) == {
        "pin_password": "***",
        "tokens": {"api_token": ["***", "***"]},
        "flag": True,
    }
    assert redact_value({"password": "${DB_PASS}"}, []) == {"password": "${DB_PASS}"}


def test_redact_url_keeps_a_url_without_secrets_as_written() -> None:
    assert redact_url("sqlite:///stepline.db") == "sqlite:///stepline.db"
    assert redact_text("see sqlite:////var/x.db now", []) == "see sqlite:////var/x.db now"


# -- secret values of params ----------------------------------------------------------------


def test_secret_values_of_params_include_urls_and_connection_strings() -> None:
    params = {
        "period": "WEEK",
        "password": "hunter22",
        "nested": {"api_token": "tok-1234", "pin_password": 98765},
        "source": "https://u:urlpass9@api.example.com/v1?serviceKey=SK-00aa&page=1",
        "odbc": "Server=db;Uid=app;Pwd=odbcPass5;",
        "client_secret": "${CLIENT_SECRET}",
        "count": 7,
    }
    found = set(secret_values(params))
    assert {"hunter22", "tok-1234", "98765", "urlpass9", "SK-00aa", "odbcPass5"} <= found
    assert not found & {"WEEK", "${CLIENT_SECRET}", "7", "app", "db"}


# -- log events ----------------------------------------------------------------------------


def test_the_log_processor_masks_secret_fields_and_remembered_values() -> None:
    remember_secrets(["rem-4455-zz"])
    processor = redact_processor(list)
    event = {
        "event": "connecting with rem-4455-zz",
        "params": {"password": "pw-1", "token": "t0k-1", "api_key": "k-1", "period": "WEEK"},
        "api_key": "k-2",
    }
    assert processor(None, "info", event) == {
        "event": "connecting with ***",
        "params": {"password": "***", "token": "***", "api_key": "***", "period": "WEEK"},
        "api_key": "***",
    }
    assert "rem-4455-zz" in remembered_secrets()


def test_many_secrets_sharing_prefixes_are_each_masked_whole() -> None:
    secrets = [f"tok-{i:04d}-end" for i in range(300)] + ["tok-0001", "tok-0001-end-more"]
    text = "a tok-0001-end-more b tok-0299-end c tok-0001 d tok-0300-end"
    assert redact_text(text, secrets) == "a *** b *** c *** d tok-0300-end"
