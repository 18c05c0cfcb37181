"""Settings: where a value comes from (arguments, environment, ``.env``), how a wrong one is
named, and that a secret stays out of every representation."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from stepline.settings import Secret, Settings, SettingsError

PASSWORD = "s3cr3t-pw"


def settings(
    tmp_path: Path, env: dict[str, str], dotenv: str | None = None, **values: object
) -> Settings:
    file = tmp_path / ".env"
    if dotenv is not None:
        file.write_text(dotenv, encoding="utf-8")
    return Settings(file, _environ=env, **values)


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    s = settings(tmp_path, {})
    assert (s.db, s.dispatcher, s.capacity, s.lease_seconds) == (
        "sqlite:///stepline.db",
        "direct",
        32,
        30.0,
    )
    assert s.api_token is None and s.broker_url is None and s.retention is None
    assert s.connections == {}


def test_arguments_win_over_the_environment_which_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = "STEPLINE_CAPACITY=8\nSTEPLINE_TIMEZONE=Asia/Seoul\nstepline_queue=from-file\n"
    env = {"STEPLINE_CAPACITY": "4", "Stepline_Log_Level": "DEBUG", "OTHER": "x"}
    s = settings(tmp_path, env, dotenv, queue="given")
    assert s.capacity == 4  # the environment over .env
    assert s.timezone == "Asia/Seoul"  # .env where the environment is silent
    assert s.log_level == "debug"  # names and these values ignore case
    assert s.queue == "given"  # an argument over both
    assert isinstance(s.capacity, int) and isinstance(s.lease_seconds, float)


def test_connections_come_from_nested_names_in_both_sources_or_a_json_object(
    tmp_path: Path,
) -> None:
    dotenv = "STEPLINE_CONNECTIONS__REPORT=sqlite:///report.db\n"
    env = {"STEPLINE_CONNECTIONS__Warehouse": f"postgresql://u:{PASSWORD}@db/w"}
    s = settings(tmp_path, env, dotenv)
    assert {k: v.get_secret_value() for k, v in s.connections.items()} == {
        "report": "sqlite:///report.db",
        "warehouse": f"postgresql://u:{PASSWORD}@db/w",
    }
    listed = settings(tmp_path / "none", {"STEPLINE_CONNECTIONS": '{"a": "sqlite://"}'})
    assert listed.connections["a"].get_secret_value() == "sqlite://"
    # The environment wins over .env in either form; in one source, a nested name wins.
    both = settings(
        tmp_path,
        {"STEPLINE_CONNECTIONS": '{"report": "env", "b": "env"}', "STEPLINE_CONNECTIONS__B": "b"},
        "STEPLINE_CONNECTIONS__REPORT=file\nSTEPLINE_CONNECTIONS__C=file\n",
    )
    assert {k: v.get_secret_value() for k, v in both.connections.items()} == {
        "report": "env",
        "b": "b",
        "c": "file",
    }
    with pytest.raises(SettingsError, match="STEPLINE_CONNECTIONS: must be a JSON object"):
        settings(tmp_path / "none", {"STEPLINE_CONNECTIONS": "sqlite://"})


def test_every_wrong_value_is_named_at_once_and_no_secret_is_repeated(tmp_path: Path) -> None:
    env = {
        "STEPLINE_CAPACITY": "0",
        "STEPLINE_LEASE_SECONDS": "soon",
        "STEPLINE_DB_STATEMENT_TIMEOUT": "nan",
        "STEPLINE_STEP_LOG_LIMIT": "8.5",
        "STEPLINE_TIMEZONE": "Mars/Olympus",
        "STEPLINE_RETENTION": "forever",
        "STEPLINE_DISPATCHER": "threads",
        "STEPLINE_CONNECTIONS": f"postgresql://u:{PASSWORD}@db/w",
    }
    with pytest.raises(SettingsError) as caught:
        settings(tmp_path, env)
    problems = caught.value.problems
    assert problems == [
        "invalid setting STEPLINE_DISPATCHER: unknown dispatcher 'threads'; "
        "valid values: direct, celery",
        "invalid setting STEPLINE_TIMEZONE: must be an IANA time zone name such as UTC or "
        "Asia/Seoul (got 'Mars/Olympus')",
        "invalid setting STEPLINE_CAPACITY: must be at least 1 (got '0')",
        "invalid setting STEPLINE_LEASE_SECONDS: must be a number (got 'soon')",
        "invalid setting STEPLINE_STEP_LOG_LIMIT: must be a whole number (got '8.5')",
        "invalid setting STEPLINE_RETENTION: invalid duration 'forever': use e.g. 500ms, 30s, "
        "10m, 1h30m, 1d or a number of seconds",
        "invalid setting STEPLINE_CONNECTIONS: must be a JSON object of names and URLs; "
        "or set STEPLINE_CONNECTIONS__<NAME>",
        "invalid setting STEPLINE_DB_STATEMENT_TIMEOUT: must be a finite number (got 'nan')",
    ]
    assert PASSWORD not in str(caught.value)


def test_bounds_of_numbers_given_as_arguments(tmp_path: Path) -> None:
    assert settings(tmp_path, {}, step_log_limit=0, capacity=1.0).capacity == 1
    assert settings(tmp_path, {"STEPLINE_CAPACITY": "5.0"}).capacity == 5
    for values, message in [
        ({"lease_seconds": 0}, "STEPLINE_LEASE_SECONDS: must be greater than 0"),
        ({"step_log_limit": 4_194_305}, "STEPLINE_STEP_LOG_LIMIT: must be at most 4194304"),
        ({"max_result_bytes": 1023}, "STEPLINE_MAX_RESULT_BYTES: must be at least 1024"),
        ({"capacity": True}, "STEPLINE_CAPACITY: must be a number, not bool"),
        ({"capacity": 2.5}, "STEPLINE_CAPACITY: must be a whole number"),
        ({"capacity": float("inf")}, "STEPLINE_CAPACITY: must be a finite number"),
        ({"lease_seconds": 10**400}, "STEPLINE_LEASE_SECONDS: int too large"),
    ]:
        with pytest.raises(SettingsError, match=message):
            settings(tmp_path, {}, **values)


def test_a_secret_is_kept_out_of_every_representation(tmp_path: Path) -> None:
    env = {
        "STEPLINE_API_TOKEN": PASSWORD,
        "STEPLINE_BROKER_URL": f"redis://:{PASSWORD}@host:6379/0",
        "STEPLINE_CONNECTIONS__REPORT": f"postgresql://u:{PASSWORD}@db/r",
        "STEPLINE_DB": f"postgresql://u:{PASSWORD}@db/stepline",
    }
    s = settings(tmp_path, env)
    for shown in (repr(s), str(s), repr(s.api_token), str(s.broker_url), repr(s.connections)):
        assert PASSWORD not in shown, shown
    assert s.api_token == Secret(PASSWORD) and s.broker() == env["STEPLINE_BROKER_URL"]
    assert not Secret("") and Secret("x")
    assert PASSWORD in s.secrets()


def test_replace_checks_values_and_reads_no_environment(tmp_path: Path) -> None:
    s = settings(tmp_path, {"STEPLINE_QUEUE": "reports"})
    celery = s.replace(dispatcher="CELERY")
    assert celery.dispatcher == "celery" and celery.queue == "reports" and s.dispatcher == "direct"
    assert celery == s.replace(dispatcher="celery") and celery != s
    with pytest.raises(SettingsError, match="STEPLINE_CAPACITY"):
        s.replace(capacity=0)
    with pytest.raises(TypeError, match="unknown setting capcity"):
        s.replace(capcity=4)
    with pytest.raises(AttributeError, match="read-only"):
        s.capacity = 4  # type: ignore[misc]
    assert copy.deepcopy(s) == s == pickle.loads(pickle.dumps(s))


def test_a_dotenv_file_is_read_only_when_it_exists(tmp_path: Path) -> None:
    assert settings(tmp_path, {}).capacity == 32  # no .env: defaults
    quoted = 'export STEPLINE_CAPACITY="8"  # comment\nSTEPLINE_QUEUE\n'
    s = settings(tmp_path, {}, quoted)
    assert s.capacity == 8 and s.queue == "stepline"  # a name without a value is ignored
    assert Settings(None, _environ={"STEPLINE_CAPACITY": "3"}).capacity == 3
