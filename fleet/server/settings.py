"""The fleet server's settings: one class, read from the environment and an optional file.

Sources, highest priority first: keyword arguments, `FLEET_*` environment variables (and plain
`DATABASE_URL`, the name every PaaS and container image uses), a `.env` file, a TOML file, the
defaults below. The file is named by `load_settings(path)` or `FLEET_CONFIG`; `.env`/`.toml`
decides how it is read.

Secrets ship with a placeholder that is refused unless `dev_mode` is on: a server started on
defaults must not come up with a broker password or session secret that anyone can look up here.
"""

from __future__ import annotations

import contextvars
import hmac
import os
import re
import socket
from datetime import time
from pathlib import Path
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fleet.firmware import DEFAULT_FIRMWARE_DIR

#: The placeholder every secret starts as; refused outside dev mode.
INSECURE_DEFAULT = "changethis"
#: Shorter secrets are refused outside dev mode: they can be guessed offline.
MIN_SECRET_CHARS = 16

# The TOML file for the Settings being built now; a context variable (not a class attribute) so
# two threads loading different files cannot see each other's.
_toml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "fleet_settings_toml", default=None
)


def is_postgres(database_url: str) -> bool:
    return database_url.split("://", 1)[0] in {"postgres", "postgresql", "asyncpg", "psycopg"}


class InsecureSettingsError(ValueError):
    """A secret is left at its default or is too short, and dev mode is off."""


class Settings(BaseSettings):
    """Everything `fleet serve` and its commands can be told; see the module docstring."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Path("fleet-data")
    # Empty means a SQLite file in data_dir (filled in after validation).
    database_url: str = Field(
        default="", validation_alias=AliasChoices("FLEET_DATABASE_URL", "DATABASE_URL")
    )

    # None: start and supervise our own Mosquitto on loopback.
    broker_url: str | None = None
    broker_admin_user: str = "fleet-server"
    # The server's MQTT client ids are this plus ".ingest" and ".pub" (the ingest's persistent
    # session lives under it). The dot keeps them apart from every terminal id. Distinct per
    # replica when several servers share one broker.
    broker_client_id: str = Field(default="fleet-server", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    # Several `fleet serve` on one PostgreSQL and one broker share the ingest (README,
    # "Replicas"). None: on exactly when the database is PostgreSQL. SQLite cannot be shared.
    replicas: bool | None = None
    # This replica's name: its MQTT client ids end with it, so a replica that restarts takes its
    # broker session back, with what was queued for it. Empty: the host name and the API port.
    replica_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,60}$")
    broker_admin_password: SecretStr = SecretStr(INSECURE_DEFAULT)
    # Signs dashboard sessions and short-lived SSE tickets.
    session_secret: SecretStr = SecretStr(INSECURE_DEFAULT)
    # When set, GET /metrics needs `Authorization: Bearer <it>` (Prometheus: `authorization` or
    # `bearer_token_file`); operator and admin API tokens are accepted too. Unset, /metrics is
    # open in dev mode only, and otherwise for operator and admin API tokens alone: it names
    # every terminal, its site and its paper level.
    metrics_token: SecretStr | None = None
    # The fleet's config key (EdDSA, PKCS#8 PEM) that signs desired-state documents. Empty means
    # `config-key.pem` in data_dir. Made on first start in dev mode; outside dev mode a missing
    # file stops the server (make it with `fleet keys generate --alg EdDSA --out ...`).
    config_key_file: Path | None = None
    # The issuing key that signs licences (LIC1): a separate key from the config key, since
    # auditors trust it and kiosks do not. Empty means `issuer-key.pem` in data_dir; made (with
    # issuer_key_alg) on first start in dev mode, required outside it.
    issuer_key_file: Path | None = None
    issuer_key_alg: Literal["EdDSA", "ES256", "SM2"] = "EdDSA"
    # The issuing authority: `iss` of every licence and `issuer` of the trust list.
    issuer: str = Field(default="CN-510107", min_length=1, max_length=64)
    # The authority's name as printed on the licence (登记机关).
    issuer_authority_name: str = "成都市武侯区市场监督管理局"
    # Earlier issuing keys (PEM files, public or private) still on the trust list, so licences
    # printed before a key rotation keep verifying.
    issuer_previous_keys: list[Path] = Field(default_factory=list)
    # The Chinese TrueType font of the printable licence; empty: the first of the Debian fonts
    # listed in fleet/server/licences/pdf.py that is installed (fonts-wqy-microhei).
    licence_font_file: Path | None = None

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    dev_mode: bool = False

    history_retention_days: int = Field(default=30, ge=1)
    downsample_after_hours: int = Field(default=24, ge=1)
    # Offline after this many missed status intervals without a report.
    heartbeat_intervals: int = Field(default=3, ge=1)
    status_interval_s: int = Field(default=30, ge=1)
    ingest_batch_size: int = Field(default=500, ge=1)
    ingest_flush_interval_s: float = Field(default=0.25, gt=0)
    max_payload_bytes: int = Field(default=64 * 1024, ge=256)
    # Dead letters kept per terminal (newest kept): one terminal's flood of garbage cannot
    # erase the evidence about another's. The table is bounded by the fleet's size times this.
    dead_letter_max_per_terminal: int = Field(default=100, ge=1)
    # A report dated further ahead of the server's clock than this is dead-lettered
    # (`clock_skew`): stored, it would be "the newest" in every history query until then. Status
    # reports and events dated before the history retention are refused likewise.
    ingest_max_ts_ahead_s: int = Field(default=600, ge=1)
    # What one terminal may send (ingest/rate.py): a burst that covers an outbox emptying after a
    # week offline at a 30 s interval, then a sustained rate far above any agent's own.
    ingest_terminal_burst: int = Field(default=20_000, ge=1)
    ingest_terminal_rate_per_s: float = Field(default=5.0, gt=0)
    dead_letter_payload_max_chars: int = Field(default=4096, ge=64)

    paper_low_pct: int = Field(default=20, ge=0, le=100)
    service_hours_start: time = time(8, 30)
    service_hours_end: time = time(17, 30)
    service_timezone: str = "Asia/Shanghai"
    # Seconds between runs of the paper run-out forecast job (the paper_runout_soon alert).
    forecast_interval_s: float = Field(default=300.0, gt=0)

    # Hardware-model files (firmware_configs/): per-model alert thresholds, the model layer of
    # desired state. Default: the repository's, next to the `fleet` package (FLEET_FIRMWARE_DIR).
    firmware_dir: Path = DEFAULT_FIRMWARE_DIR

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings, dotenv_settings, file_secret_settings]
        toml = _toml_file.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @field_validator("service_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @model_validator(mode="after")
    def _finish(self) -> Self:
        if not self.database_url:
            self.database_url = f"sqlite://{self.data_dir / 'fleet.sqlite3'}"
        if self.config_key_file is None:
            self.config_key_file = self.data_dir / "config-key.pem"
        if self.issuer_key_file is None:
            self.issuer_key_file = self.data_dir / "issuer-key.pem"
        if self.service_hours_end <= self.service_hours_start:
            raise ValueError("service_hours_end must be after service_hours_start")
        if self.replicas and not is_postgres(self.database_url):
            raise ValueError("replicas need PostgreSQL: set FLEET_DATABASE_URL=postgres://…")
        if not self.replica_id:
            host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:50] or "host"
            self.replica_id = f"{host}-{self.api_port}"
        if not self.dev_mode:
            self._refuse_weak_secrets()
        return self

    def _refuse_weak_secrets(self) -> None:
        problems = []
        for name in ("broker_admin_password", "session_secret", "metrics_token"):
            value: SecretStr | None = getattr(self, name)
            if value is None:  # an optional secret left unset (metrics_token)
                continue
            secret = value.get_secret_value()
            env = f"FLEET_{name.upper()}"
            if secret == INSECURE_DEFAULT:
                problems.append(f"{env} is the default placeholder")
            elif len(secret) < MIN_SECRET_CHARS:
                problems.append(f"{env} is shorter than {MIN_SECRET_CHARS} characters")
        if problems:
            raise InsecureSettingsError(
                "refusing insecure settings: "
                + "; ".join(problems)
                + ". Set them (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                " or set FLEET_DEV_MODE=1 on a development machine."
            )

    @property
    def ingest_share_group(self) -> str:
        """The replicas' shared-subscription group: `fleet-` and 16 hex digits derived from the
        broker password. Not `fleet`: a broker hands a group member its share of the messages
        even when its ACL then refuses to deliver them, so one kiosk subscribing to
        `$share/fleet/fleet/v1/t/+/status` with its own credentials would make its share vanish
        (measured on Mosquitto 2.0.11: half of all reports, with one replica). Only the
        servers, who hold the password, know this name."""
        secret = self.broker_admin_password.get_secret_value().encode()
        return "fleet-" + hmac.new(secret, b"ingest share group", "sha256").hexdigest()[:16]

    @property
    def replicated(self) -> bool:
        """Share the ingest with other replicas (a relay here, the handling on one of them)."""
        return self.replicas if self.replicas is not None else is_postgres(self.database_url)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.service_timezone)

    @property
    def offline_after_s(self) -> float:
        """Silence after which a terminal counts as offline (heartbeat timeout)."""
        return float(self.heartbeat_intervals * self.status_interval_s)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment and `config_file` (or `$FLEET_CONFIG`), overrides on top.

    Raises pydantic's ValidationError (InsecureSettingsError among its causes) on bad values,
    and FileNotFoundError when the named file is missing: a typo must not silently mean defaults.
    """
    name = config_file if config_file is not None else os.environ.get("FLEET_CONFIG")
    if name is None or name == "":
        return Settings(**overrides)
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {str(path)!r} does not exist")
    if path.suffix == ".toml":
        token = _toml_file.set(path)
        try:
            return Settings(**overrides)
        finally:
            _toml_file.reset(token)
    return Settings(_env_file=path, **overrides)  # type: ignore[call-arg]
