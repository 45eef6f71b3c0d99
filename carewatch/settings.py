"""The one settings class: every knob is a typed field read from a ``CAREWATCH_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("carewatch"))


class Settings(BaseSettings):
    """Settings shared by every process; unset URLs mean "start an embedded service"."""

    model_config = SettingsConfigDict(env_prefix="CAREWATCH_", env_file=None, extra="ignore")

    # --- connections -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset starts an embedded PostgreSQL under data_dir."
    )
    mqtt_url: str | None = Field(
        default=None, description="mqtt://user:pass@host:port (mqtts:// for TLS); unset starts a broker."
    )
    mqtt_ca_file: Path | None = Field(default=None, description="CA bundle for mqtts:// connections.")
    mqtt_client_id_prefix: str = "carewatch"
    data_dir: Path = Field(default_factory=default_data_dir)

    # --- broker tuning (see deploy/mosquitto/mosquitto.conf for the broker side) ---------------
    mqtt_receive_maximum: int = Field(
        default=4096, ge=1, le=65535, description="QoS 1 messages in flight to one consumer before acks."
    )
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    mqtt_keepalive_s: int = 30

    # --- ingest ----------------------------------------------------------------------------
    ingest_batch_max: int = Field(default=2000, ge=1, description="Messages per database transaction.")
    ingest_batch_wait_ms: int = Field(default=20, ge=0, description="Longest a message waits for a batch.")
    ingest_group: str = Field(default="ingest", description="Shared-subscription group of ingest workers.")
    ingest_worker_id: str = Field(default="1", description="Stable per worker: names its MQTT session.")
    max_future_skew_s: int = Field(default=300, ge=0, description="Device clocks ahead by more are refused.")
    max_past_age_days: int = Field(default=30, ge=1, description="Older timestamps are refused (wrong year).")
    retention_days: int = Field(default=180, ge=1, description="Raw telemetry kept this long.")
    rollup_retention_days: int = Field(default=3 * 365, ge=1)
    metrics_port: int | None = Field(
        default=None, description="Serve /metrics on this port (ingest, alerts)."
    )

    # --- alert engine -----------------------------------------------------------------------
    alerts_group: str = "alerts"
    alerts_worker_id: str = "1"
    alerts_tick_s: float = Field(default=1.0, gt=0, description="Timer resolution for silence/inactivity.")
    alerts_events_nice: int = Field(
        default=-10,
        ge=-20,
        le=19,
        description="Scheduling priority of the engine's events process (falls, SOS): on a busy machine it "
        "runs first. Below 0 needs CAP_SYS_NICE; if refused, it runs at normal priority and says so.",
    )

    # --- hotline queue ----------------------------------------------------------------------
    answer_target_s: dict[int, int] = Field(
        default={1: 60, 2: 180, 3: 900, 4: 3600}, description="Per-priority answer-time target."
    )
    escalation_repeat_s: int = Field(default=60, ge=5)
    claim_timeout_s: int = Field(default=300, ge=10, description="A claim with no action returns to queue.")
    notify_webhook_url: str | None = None

    # --- API --------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    secret_key: SecretStr | None = Field(
        default=None, description="Token signing key; unset generates one kept under data_dir."
    )
    token_ttl_s: int = Field(default=15 * 60, ge=30)
    refresh_ttl_s: int = Field(default=12 * 3600, ge=60)
    login_attempts_per_minute: int = 10
    cors_origins: list[str] = Field(default_factory=list)
    broker_passwd_file: Path | None = Field(
        default=None, description="Mosquitto password file the API rewrites when devices are enrolled."
    )
    broker_acl_file: Path | None = None
    broker_pid_file: Path | None = Field(default=None, description="Sent SIGHUP to reload the broker.")
    broker_service_passwd_file: Path | None = Field(
        default=None,
        description="'user:$7$hash' lines of the service accounts (carewatch-ingest/-alerts/-api), kept in "
        "the generated password file next to the devices (compose mounts it as a secret).",
    )

    # --- logging ----------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = False

    def answer_target(self, priority: int) -> int:
        return self.answer_target_s.get(priority, max(self.answer_target_s.values()))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
