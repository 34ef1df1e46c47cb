"""Settings from HARMONY_* environment variables (and a .env file if present)."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, HttpUrl, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from harmony.errors import ValidationFailed
from harmony.inputs import AdapterName
from harmony.routing.agent_state import DEFAULT_NOT_READY_REASONS

# Only for a laptop: `harmony serve` warns loudly when a configured adapter still uses it.
DEV_SECRET = "whsec_" + base64.b64encode(b"harmony-dev-secret-change-me!!!!").decode()
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./var/harmony.db"


def check_secret_form(secret: str) -> str:
    """A signing secret is ``whsec_`` + base64 (or bare base64) of at least 16 bytes.

    Checked here, without the adapter, so configuration errors surface before anything starts.
    """
    encoded = secret.removeprefix("whsec_")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("secret must be whsec_ followed by base64") from exc
    if len(raw) < 16:
        raise ValueError(f"secret must decode to at least 16 bytes, not {len(raw)}")
    return secret


class AdapterSettings(BaseModel):
    """One configured CRM or ACD endpoint."""

    type: Literal["generic_http"] = "generic_http"
    url: HttpUrl
    secret: str = DEV_SECRET
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    @field_validator("secret")
    @classmethod
    def _secret_is_usable(cls, value: str) -> str:
        return check_secret_form(value)


class Settings(BaseSettings):
    """Everything Harmony reads from its environment; see the README's table."""

    model_config = SettingsConfigDict(
        env_prefix="HARMONY_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    database_url: str = DEFAULT_SQLITE_URL
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    migrate_on_start: bool = True
    seed_file: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    crm_adapters: dict[AdapterName, AdapterSettings] = Field(
        default_factory=lambda: {"generic": AdapterSettings(url=HttpUrl("http://127.0.0.1:8102"))}
    )
    acd_adapters: dict[AdapterName, AdapterSettings] = Field(
        default_factory=lambda: {"generic": AdapterSettings(url=HttpUrl("http://127.0.0.1:8101"))}
    )
    routing_acd: str = "generic"
    not_ready_reasons: tuple[str, ...] = DEFAULT_NOT_READY_REASONS
    inbox_retention_days: float = Field(
        default=7.0,
        gt=0,
        le=3650,
        description="days the inbox keeps a received event and its payload (to inspect, "
        "re-drive and de-duplicate it); a delivery retried later than this is applied again",
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        le=200,
        description="PostgreSQL connections each process keeps open (SQLite: ignored)",
    )
    db_max_overflow: int = Field(
        default=5,
        ge=0,
        le=200,
        description="connections opened beyond the pool in a burst, closed when returned",
    )
    relay_batch_size: int = Field(default=100, ge=1, le=1000)
    relay_concurrency: int = Field(default=32, ge=1, le=512)
    relay_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    relay_max_attempts: int = Field(default=8, ge=1, le=100)
    relay_base_backoff_seconds: float = Field(default=0.5, gt=0, le=60)
    relay_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    scheduler_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often each replica looks for due timers (offer and routing "
        "timeouts, maximum waits): a timer fires at most this late",
    )
    scheduler_batch_size: int = Field(default=50, ge=1, le=1000)
    scheduler_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_inflight_events: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="inbound events applied at once; one more waits up to "
        "admission_wait_seconds for a slot, then gets 503 overloaded",
    )
    admission_wait_seconds: float = Field(
        default=0.1,
        ge=0,
        le=10,
        description="how long an inbound event may wait for a slot before 503 overloaded",
    )
    max_relay_lag_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="seconds the oldest outbound message due may have waited before "
        "interaction.created gets 503 overloaded (0: never)",
    )
    overload_retry_after_seconds: int = Field(
        default=1,
        ge=1,
        le=3600,
        description="the Retry-After of a 503 overloaded, in seconds",
    )

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        return value

    @field_validator("not_ready_reasons")
    @classmethod
    def _reasons_are_codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one not-ready reason is needed")
        bad = [r for r in value if not r or len(r) > 64 or not r.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"reason codes are 1-64 letters, digits or _: {bad}")
        if "rona" not in value:
            # Harmony sets it itself (RONA) and both peers echo it back.
            raise ValueError("must include 'rona', the reason Harmony gives a missed offer")
        return value

    @model_validator(mode="after")
    def _routing_acd_is_configured(self) -> Settings:
        if self.routing_acd not in self.acd_adapters:
            raise ValueError(
                f"routing_acd '{self.routing_acd}' is not one of acd_adapters "
                f"{sorted(self.acd_adapters)}"
            )
        return self

    def crm_adapter_for_agent(self, given: str | None) -> str:
        """The CRM adapter an agent's work goes to: ``given`` if configured, else (none given)
        the only CRM configured, else ``generic``. An agent bound to an adapter that does not
        exist would have every delivery refused, so that is a 422 ``unknown_adapter``."""
        if given is None:
            given = next(iter(self.crm_adapters)) if len(self.crm_adapters) == 1 else "generic"
        if given not in self.crm_adapters:
            raise ValidationFailed(
                f"crm_adapter: '{given}' is not a configured CRM adapter "
                f"({', '.join(sorted(self.crm_adapters))})",
                code="unknown_adapter",
            )
        return given

    def adapters_using_dev_secret(self) -> list[str]:
        """Names of adapters still signing with the published development secret."""
        return [
            f"{kind}:{name}"
            for kind, table in (("crm", self.crm_adapters), ("acd", self.acd_adapters))
            for name, adapter in table.items()
            if adapter.secret == DEV_SECRET
        ]


class DefaultSettings(Settings):
    """Settings from their defaults and the arguments alone, never the environment: for what
    must not depend on the machine it is made on, such as the committed OpenAPI document."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
