"""``${NAME}`` references: one helper resolves them for alerts, the http runner and the API."""

from __future__ import annotations

import pytest

from stepline.core.environment import (
    UnsetVariable,
    expand_env,
    has_env_references,
    strip_env_references,
)


def test_references_are_replaced_and_each_value_is_reported() -> None:
    seen: list[str] = []
    text = expand_env(
        "https://${HOST}/hook/${TOKEN}?x=${HOST}",
        {"HOST": "example.com", "TOKEN": "s3cret"},
        on_value=seen.append,
    )

    assert text == "https://example.com/hook/s3cret?x=example.com"
    assert seen == ["example.com", "s3cret", "example.com"]


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLINE_TEST_ENV_VALUE", "from-env")

    assert expand_env("v=${STEPLINE_TEST_ENV_VALUE}") == "v=from-env"


def test_an_unset_variable_is_named() -> None:
    with pytest.raises(UnsetVariable) as raised:
        expand_env("${SET} ${MISSING}", {"SET": "1"})

    assert raised.value.name == "MISSING"
    assert str(raised.value) == (
        "references ${MISSING}, but the environment variable MISSING is not set"
    )


@pytest.mark.parametrize("text", ["$NAME", "${1ABC}", "${A-B}", "{NAME}", "$${}"])
def test_only_braced_identifiers_are_references(text: str) -> None:
    assert not has_env_references(text)
    assert expand_env(text, {}) == text


def test_strip_leaves_what_is_written_around_references() -> None:
    assert has_env_references("Bearer ${TOKEN}")
    assert strip_env_references("Bearer ${TOKEN}") == "Bearer "
