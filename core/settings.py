"""Settings for every Lishui process, from the environment (prefix ``LISHUI_``) or a ``.env`` file.

Nested groups use a double underscore: ``LISHUI_DB__DSN``, ``LISHUI_MQTT__HOST``.
"""

from __future__ import annotations

from datetime import date, time
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseModel):
    dsn: str = "postgresql://postgres@127.0.0.1:5432/lishui"
    pool_min: int = Field(1, ge=1)
    pool_max: int = Field(8, ge=1)
    # Raw telemetry older than this is dropped by the retention job (rollups are kept longer).
    retention_days: int = Field(90, ge=1)
    rollup_retention_days: int = Field(3650, ge=1)


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30


class GatewaySettings(BaseModel):
    # Directory holding the gateway's on-disk state: one subdirectory per gateway name (the spool).
    state_dir: str = ".lishui/gateway"
    request_timeout_s: float = Field(1.0, gt=0)
    max_backoff_s: float = Field(30.0, gt=0)
    # The disk spool (gateway.spool) in {state_dir}/{gateway name}/: bounded; past the limit the oldest
    # segment is dropped, and its unpublished records are lost (counted, logged as errors).
    spool_max_bytes: int = Field(1 << 30, ge=64 * 1024)
    spool_segment_bytes: int = Field(16 << 20, ge=4096)
    spool_fsync_interval_s: float = Field(0.1, gt=0)
    # Telemetry payloads (core.payloads.encode_telemetry): "json", or "binary" (a fifth of the size,
    # and cheaper to ingest; only catalogue metrics). Ingest accepts both whatever this says.
    telemetry_encoding: Literal["json", "binary"] = "json"


class IngestSettings(BaseModel):
    # Telemetry subscription. Empty (the default): a plain subscription, for one ingest process per
    # broker. A name (``LISHUI_INGEST__SHARE_GROUP=ingest``): the shared subscription
    # ``$share/{name}/...``, so ingest scales by adding processes to the group. The default is plain
    # because Mosquitto 2.0 does not restore shared subscriptions when it restarts (what is published
    # before the members subscribe again is dropped), a plain one it keeps: lossless comes first, scale-out
    # is a choice. See docs/architecture.md, "Ingest".
    share_group: str = Field("", pattern=r"^([^/+#$]+)?$")
    # Stable and unique per ingest instance: the broker keeps its persistent session (and the QoS 1
    # messages queued for it) under this id. Default: derived from topic root, group and host name.
    client_id: str | None = None
    batch_max_rows: int = Field(20_000, ge=1)
    batch_max_delay_s: float = Field(0.5, gt=0)
    rollup_interval_s: float = Field(5.0, gt=0)
    # A 1-minute rollup bucket is recomputed once its minute closed this long ago and nothing dirtied
    # it for this long (0: at every refresh, as soon as it is dirty). See migration 0004.
    rollup_grace_s: float = Field(5.0, ge=0)
    # The disk spill (ingest.spill) in {spill_dir}/{client id}/: once writes have failed for
    # ``spill_after_s``, received messages are appended there (fsynced) and acknowledged, so the broker's
    # bounded queue drains during a long database outage; they are written when the database is back.
    # Past ``spill_max_bytes`` ingest stops acknowledging and the broker holds the rest (nothing is
    # dropped). ``spill_max_bytes = 0``: no spill.
    spill_dir: str = ".lishui/ingest-spill"
    spill_after_s: float = Field(10.0, ge=0)
    spill_max_bytes: int = Field(1 << 30, ge=0)
    spill_segment_bytes: int = Field(8 << 20, ge=4096)


class DrSettings(BaseModel):
    # One control cycle: read telemetry, compare with the baseline, re-dispatch the shortfall.
    control_interval_s: float = Field(30.0, gt=0)
    # Every command holds this long unless renewed, so devices fall back if the controller dies.
    hold_s: float = Field(120.0, gt=0)
    command_expiry_s: float = Field(20.0, gt=0)
    default_baseline: str = "high_5_of_10_adjusted"
    solver_time_limit_s: float = Field(1.0, gt=0)
    # Only the holder of this PostgreSQL advisory lock acts; standbys wait for it.
    leader_lock_key: int = 0x6C6973687569_0D52
    timezone: str = "Asia/Shanghai"
    # Day-ahead forecasts (dr_controller.forecast_schedule): the leader issues tomorrow's every day at
    # this local time (``timezone``), and at start-up when tomorrow has none yet, then reports
    # yesterday's error. Off: only through the API.
    forecast_daily: bool = True
    forecast_at: time = time(16, 0)
    # The year's public holidays and make-up workdays (调休): they decide the similar days of the daily
    # forecasts and of the events' program baselines.
    holidays: list[date] = Field(default_factory=list)
    make_up_workdays: list[date] = Field(default_factory=list)


class OcppSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    # wss:// when both are set (security profile 2); ws:// otherwise (security profile 1).
    tls_cert: str | None = None
    tls_key: str | None = None
    # BootNotification interval (heartbeat) for accepted piles, and the retry interval for pending ones.
    heartbeat_interval_s: int = Field(300, ge=1)
    pending_retry_s: int = Field(60, ge=1)
    # How long the server waits for a pile's answer to a call.
    call_timeout_s: float = Field(30.0, gt=0)
    # Websocket ping interval/timeout (dead-peer detection); 0 disables pings.
    ping_interval_s: float = Field(60.0, ge=0)
    ping_timeout_s: float = Field(30.0, gt=0)
    # A pile with no password set may connect without Basic auth (never in production).
    allow_no_password: bool = False
    # Name of this server node (in Status.source, service status topic, MQTT client id).
    node: str | None = None
    # Shared-subscription group of the site-level commands (one node of the group gets each).
    share_group: str = "ocpp"
    # Largest websocket message accepted from a pile; reuse_port lets several processes share the port.
    max_message_bytes: int = Field(1 << 20, ge=1024)
    reuse_port: bool = False
    # Database pool of a node (at least the db group's pool_max), and how the handshake uses it: pile
    # auth rows are cached for auth_cache_ttl_s and looked up in batches on at most handshake_db_conns
    # connections, waiting up to handshake_wait_s (then 503) for the database.
    pool_max: int = Field(16, ge=2)
    auth_cache_ttl_s: float = Field(60.0, ge=0)
    handshake_db_conns: int = Field(2, ge=1)
    handshake_wait_s: float = Field(20.0, gt=0)
    # permessage-deflate: off by default (OCPP frames are small; a zlib context per connection costs
    # memory and CPU at 10,000 piles); on for piles on metered links.
    ws_compression: bool = False


class OpenAdrSettings(BaseModel):
    """The OpenADR 2.0b VEN (``dr_controller.openadr.run_ven``): a standard VTN drives Lishui."""

    # The VTN's simpleHttp endpoint prefix. Plain http only for tests and closed networks.
    vtn_url: str = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    ven_name: str = "lishui"
    ven_id: str | None = None  # assigned by the VTN at registration when not set
    # PEM files: the TLS client certificate and key (also used to sign messages, unless sign_messages is
    # off), the CA that issued the VTN's certificate (needed with them), and the VTN's certificate
    # fingerprint (its message signatures are checked against it when set).
    cert: str | None = None
    key: str | None = None
    passphrase: str | None = None
    ca_file: str | None = None
    vtn_fingerprint: str | None = None
    sign_messages: bool = True
    check_hostname: bool = True
    # SIMPLE signal levels 1, 2 and 3 (moderate, high, special) as peak-shaving targets, kW.
    simple_levels_kw: tuple[float, float, float] = (6000.0, 12000.0, 18000.0)
    # Opt in only when the capacity available now (live telemetry, over the event's length) is at least
    # this times what the event asks.
    capacity_margin: float = Field(1.0, ge=1.0)
    max_event_h: float = Field(24.0, gt=0)
    telemetry_max_age_s: float = Field(60.0, gt=0)
    # Sampling periods the telemetry report offers; the VTN picks one in between.
    report_min_period_s: float = Field(10.0, ge=1)
    report_max_period_s: float = Field(3600.0, ge=1)
    # With each opt-out, also send an oadrCreateOpt carrying the OpenADR optReason (the VTN's EiOpt).
    send_opt_reasons: bool = True
    register_retry_s: float = Field(10.0, gt=0)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LISHUI_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    db: DatabaseSettings = DatabaseSettings()
    mqtt: MqttSettings = MqttSettings()
    gateway: GatewaySettings = GatewaySettings()
    ingest: IngestSettings = IngestSettings()
    api: ApiSettings = ApiSettings()
    dr: DrSettings = DrSettings()
    ocpp: OcppSettings = OcppSettings()
    openadr: OpenAdrSettings = OpenAdrSettings()
    # Root of the topic tree; tests give each run its own so runs never see each other's traffic.
    topic_root: str = "lishui"
    log_level: str = "INFO"
    log_json: bool = True
    # 0 disables a service's Prometheus endpoint; each service adds its own offset to this base.
    metrics_port: int = 0


@lru_cache
def get_settings() -> Settings:
    return Settings()
