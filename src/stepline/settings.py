"""Settings from ``STEPLINE_*`` environment variables or ``.env``."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DISPATCHERS = ("direct", "celery")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STEPLINE_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    db: str = Field("sqlite:///stepline.db", description="Stepline's own database URL")
    api_token: SecretStr | None = Field(None, description="Bearer token of the HTTP API")
    dispatcher: str = Field("direct", description="direct or celery")
    broker_url: SecretStr | None = Field(None, description="Celery broker URL")
    queue: str = Field("stepline", description="Celery queue of steps that name no queue")
    broker_visibility_timeout: float = Field(
        3600.0, gt=0, description="Redis broker: seconds before an unacknowledged step is resent"
    )
    timezone: str = Field("UTC", description="Default timezone of cron schedules")
    capacity: int = Field(32, ge=1, description="Steps one process runs at once")
    lease_seconds: float = Field(30.0, gt=0, description="Owner lease, timed by the database")
    max_result_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest step result stored, in bytes of JSON; a larger one fails the step",
    )
    log_format: str = Field("console", description="console or json")
    log_level: str = Field("info")
    connections: dict[str, SecretStr] = Field(
        default_factory=dict, description="Named business databases: STEPLINE_CONNECTIONS__NAME"
    )
    db_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for a connection to Stepline's database"
    )
    db_statement_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds one statement on Stepline's database may take (0: no limit); "
        "migrations are exempt",
    )
    secret_names: str = Field(
        "",
        description="Comma-separated extra name endings that mark a param or field secret "
        "(besides password, token, secret, api_key, ...)",
    )

    def secret_name_list(self) -> list[str]:
        return [n.strip() for n in self.secret_names.split(",") if n.strip()]

    @field_validator("dispatcher")
    @classmethod
    def _known_dispatcher(cls, value: str) -> str:
        if value not in DISPATCHERS:
            raise ValueError(
                f"unknown dispatcher {value!r}; valid values: {', '.join(DISPATCHERS)}"
            )
        return value

    def broker(self) -> str:
        """The broker URL of the celery dispatcher; ValueError naming the fix if unset."""
        if self.broker_url is None or not self.broker_url.get_secret_value():
            raise ValueError(
                "the celery dispatcher needs a broker: set STEPLINE_BROKER_URL to "
                "redis://host:6379/0 or amqp://user:password@host:5672//"
            )
        return self.broker_url.get_secret_value()

    def secrets(self) -> list[str]:
        """Every configured secret value, for redaction of logs and error messages: the API
        token, the broker URL, the connection URLs, and their passwords and query tokens."""
        from stepline.redact import url_secrets

        values = [s.get_secret_value() for s in (self.api_token, self.broker_url) if s]
        values += [c.get_secret_value() for c in self.connections.values()]
        for url in [self.db, *values]:
            values.extend(_url_passwords(url))
            if "://" in url:
                values.extend(url_secrets(url))
        return list(dict.fromkeys(v for v in values if v))


def _url_passwords(url: str) -> list[str]:
    """The password of a SQLAlchemy URL (which urlsplit may not parse, e.g. oracle DSNs)."""
    from sqlalchemy import make_url

    try:
        password = make_url(url).password
    except Exception:
        return []
    return [str(password)] if password else []
