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
        """Every configured secret value, for redaction of logs and error messages."""
        values = [s.get_secret_value() for s in (self.api_token, self.broker_url) if s]
        values += [c.get_secret_value() for c in self.connections.values()]
        from sqlalchemy import make_url

        for url in [self.db, *values]:
            try:
                password = make_url(url).password
            except Exception:
                continue
            if password:
                values.append(str(password))
        return [v for v in values if v]
