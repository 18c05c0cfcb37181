"""Settings from ``STEPLINE_*`` environment variables or ``.env``."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STEPLINE_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    db: str = Field("sqlite:///stepline.db", description="Stepline's own database URL")
    api_token: SecretStr | None = Field(None, description="Bearer token of the HTTP API")
    dispatcher: str = Field("direct", description="direct or celery")
    broker_url: SecretStr | None = Field(None, description="Celery broker URL")
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
