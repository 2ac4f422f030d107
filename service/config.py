"""Settings from environment variables, validated once at start-up (docs/operations.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import psycopg
from psycopg.conninfo import conninfo_to_dict

DEFAULT_CORS_ALLOW_HEADERS = ("Content-Type", "Authorization", "If-Match", "If-None-Match")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the service reads from its environment; tests build their own."""

    database_url: str
    host: str = "127.0.0.1"
    port: int = 5175
    workers: int = 1
    pool_min: int = 1
    pool_max: int = 4
    pool_timeout: float = 5.0
    pool_max_waiting: int = 200
    statement_timeout_ms: int = 10_000
    prepare_threshold: int | None = 5
    pipeline: bool = True
    batch_max_statements: int = 64
    body_timeout: float = 30.0
    upload_buffer_mb: int = 100
    startup_timeout: float = 30.0
    shutdown_timeout: float = 25.0
    retry_after: int = 5
    user_limit_per_window: int = 100
    ip_limit_per_window: int = 0
    rate_limit_window: int = 3600
    rate_limit_exchange_interval: float = 0.2
    forwarded_allow_ips: str = "127.0.0.1,::1"
    cors_origins: tuple[str, ...] = ("*",)
    cors_allow_headers: tuple[str, ...] = DEFAULT_CORS_ALLOW_HEADERS
    inactive_days: int = 730
    log_format: str = "text"
    log_level: str = "INFO"
    migrate_on_start: bool = True
    application_name: str = "logikids-sync"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    cleanup_interval: int = 86400
    # Bearer tokens (service/auth.py), off while neither a secret nor a key file is set.
    auth_jwt_secret: str = field(default="", repr=False)
    auth_jwt_public_key_file: str = ""
    auth_jwt_algorithm: str = ""
    auth_user_claim: str = "userId"
    auth_jwt_audience: str = ""
    auth_jwt_issuer: str = ""
    auth_jwt_leeway_seconds: int = 30

    def with_changes(self, **changes: object) -> Settings:
        """A copy with some values replaced (handy for tests and CLI flags)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise ConfigError naming the bad one."""
        env = os.environ if environ is None else environ
        database_url = env.get("DATABASE_URL", "").strip()
        if not database_url:
            raise ConfigError(
                "DATABASE_URL is not set: give the libpq URL of the database "
                "(`make dev` starts a local PostgreSQL and sets it for you)"
            )
        try:
            conninfo_to_dict(database_url)
        except psycopg.ProgrammingError:
            # libpq's message repeats the bad part, which may be the password.
            raise ConfigError(
                "DATABASE_URL is not a valid libpq URL or conninfo string "
                "(value not shown: it may hold a password; percent-encode special characters)"
            ) from None
        pool_min = _int(env, "DB_POOL_MIN", 1, minimum=0)
        pool_max = _int(env, "DB_POOL_MAX", 4, minimum=1)
        if pool_min > pool_max:
            raise ConfigError(f"DB_POOL_MIN ({pool_min}) must not exceed DB_POOL_MAX ({pool_max})")
        log_format = env.get("LOG_FORMAT", "text").strip().lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT must be 'text' or 'json', not {log_format!r}")
        log_level = env.get("LOG_LEVEL", "INFO").strip().upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {log_level!r}"
            )
        origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "*").split(",") if o.strip())
        for name in ("AUTH_JWT_SECRET", "AUTH_JWT_PUBLIC_KEY_FILE"):
            if name in env and not env[name].strip():
                # `AUTH_JWT_SECRET: ${JWT_SECRET}` with JWT_SECRET unset must not mean "off".
                raise ConfigError(f"{name} is set but empty: unset it to turn authentication off")
        settings = cls(
            database_url=database_url,
            host=env.get("HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=_int(env, "PORT", 5175, minimum=0, maximum=65535),
            workers=_int(env, "WORKERS", 1, minimum=1),
            pool_min=pool_min,
            pool_max=pool_max,
            pool_timeout=_float(env, "DB_POOL_TIMEOUT", 5.0),
            pool_max_waiting=_int(env, "DB_POOL_MAX_WAITING", 200, minimum=0),
            statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 10_000, minimum=0),
            prepare_threshold=_prepare_threshold(env),
            pipeline=_bool(env, "DB_PIPELINE", True),
            batch_max_statements=_int(env, "DB_BATCH_MAX", 64, minimum=1),
            body_timeout=_float(env, "REQUEST_BODY_TIMEOUT", 30.0),
            upload_buffer_mb=_int(env, "UPLOAD_BUFFER_MB", 100, minimum=4),
            startup_timeout=_float(env, "STARTUP_TIMEOUT", 30.0),
            shutdown_timeout=_float(env, "SHUTDOWN_TIMEOUT", 25.0),
            retry_after=_int(env, "RETRY_AFTER", 5, minimum=1),
            # The names say "hour" for the default window; the limits count per window.
            user_limit_per_window=_int(env, "RATE_LIMIT_PER_HOUR", 100, minimum=0),
            ip_limit_per_window=_int(env, "RATE_LIMIT_PER_IP_HOUR", 0, minimum=0),
            rate_limit_window=_int(env, "RATE_LIMIT_WINDOW_SECONDS", 3600, minimum=1),
            rate_limit_exchange_interval=_int(env, "RATE_LIMIT_EXCHANGE_MS", 200, minimum=10)
            / 1000,
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1").strip(),
            cors_origins=origins or ("*",),
            inactive_days=_int(env, "INACTIVE_DAYS", 730, minimum=1),
            log_format=log_format,
            log_level=log_level,
            migrate_on_start=_bool(env, "MIGRATE_ON_START", True),
            application_name=env.get("DB_APPLICATION_NAME", "logikids-sync").strip()
            or "logikids-sync",
            metrics_port=_int(env, "METRICS_PORT", 0, minimum=0, maximum=65535),
            metrics_host=env.get("METRICS_HOST", "127.0.0.1").strip() or "127.0.0.1",
            cleanup_interval=_int(env, "CLEANUP_INTERVAL", 86400, minimum=0),
            cors_allow_headers=_header_names(env, "CORS_ALLOW_HEADERS", DEFAULT_CORS_ALLOW_HEADERS),
            auth_jwt_secret=env.get("AUTH_JWT_SECRET", ""),  # as given: the issuer signs with it
            auth_jwt_public_key_file=env.get("AUTH_JWT_PUBLIC_KEY_FILE", "").strip(),
            auth_jwt_algorithm=env.get("AUTH_JWT_ALGORITHM", "").strip(),
            auth_user_claim=env.get("AUTH_USER_CLAIM", "userId").strip() or "userId",
            auth_jwt_audience=env.get("AUTH_JWT_AUDIENCE", "").strip(),
            auth_jwt_issuer=env.get("AUTH_JWT_ISSUER", "").strip(),
            auth_jwt_leeway_seconds=_int(
                env, "AUTH_JWT_LEEWAY_SECONDS", 30, minimum=0, maximum=300
            ),
        )
        from service.auth import build_verifier  # imports this module

        build_verifier(settings)  # an unreadable key or a weak secret stops the start here
        return settings


def _header_names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of HTTP field names (RFC 9110 tokens), or `*`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    bad = [n for n in names if n != "*" and _TOKEN.fullmatch(n) is None]
    if bad or not names:
        raise ConfigError(f"{name} must be comma-separated header names (or *), not {raw!r}")
    return names


def _prepare_threshold(env: Mapping[str, str]) -> int | None:
    """psycopg's automatic prepared statements: `off` for PgBouncer in transaction mode,
    where a prepared statement may land on another server connection."""
    raw = env.get("DB_PREPARE_THRESHOLD", "").strip().lower()
    if raw in ("off", "none", "disable", "disabled"):
        return None
    return _int(env, "DB_PREPARE_THRESHOLD", 5, minimum=0)


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name} must be at least {minimum}{upper}, not {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")
