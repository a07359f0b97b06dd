"""Settings of the dialogs service, read from DIALOGS_* environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from servicekit.config import ConfigError, Env

# The schema's CHECK constraint; the configured limit may only be lower.
MAX_TEXT_LENGTH_CEILING = 10_000


@dataclass(frozen=True)
class Settings:
    database_url: str
    internal_token: str
    host: str = "127.0.0.1"
    port: int = 8081
    workers: int = 1
    pool_max_size: int = 10
    max_text_length: int = 4096
    max_body_bytes: int = 64 * 1024
    # Above the pause of a planned switchover of a worker group (Patroni holds its writes on
    # the coordinator until the new primary is registered: about 3 s on the lab), so that
    # the waiting writes are served, not cut short.
    statement_timeout_ms: int = 5000
    connect_timeout_s: float = 3.0
    retry_after_s: int = 2
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        database_url = env.database_url("DIALOGS_DATABASE_URL")
        token = env.text("DIALOGS_INTERNAL_TOKEN", secret=True)
        if len(token) < 16:
            raise ConfigError("DIALOGS_INTERNAL_TOKEN must be at least 16 characters")
        pool_max = env.integer("DIALOGS_POOL_MAX_SIZE", 10, minimum=1, maximum=200)
        log_level = env.text("DIALOGS_LOG_LEVEL", "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("DIALOGS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        return cls(
            database_url=database_url,
            internal_token=token,
            host=env.text("DIALOGS_HOST", "127.0.0.1"),
            port=env.integer("DIALOGS_PORT", 8081, minimum=1, maximum=65535),
            workers=env.integer("DIALOGS_WORKERS", 1, minimum=1, maximum=64),
            pool_max_size=pool_max,
            max_text_length=env.integer(
                "DIALOGS_MAX_TEXT_LENGTH", 4096, minimum=1, maximum=MAX_TEXT_LENGTH_CEILING
            ),
            max_body_bytes=env.integer(
                "DIALOGS_MAX_BODY_BYTES", 64 * 1024, minimum=1024, maximum=1024 * 1024
            ),
            statement_timeout_ms=env.integer(
                "DIALOGS_STATEMENT_TIMEOUT_MS", 5000, minimum=100, maximum=600_000
            ),
            connect_timeout_s=env.number(
                "DIALOGS_CONNECT_TIMEOUT_S", 3.0, minimum=0.1, maximum=60.0
            ),
            retry_after_s=env.integer("DIALOGS_RETRY_AFTER_S", 2, minimum=1, maximum=3600),
            log_level=log_level,
        )
