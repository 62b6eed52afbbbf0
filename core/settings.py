"""The one Settings class, read from the environment (prefix ``TIMERHOOK_``) and an optional .env.

It lives in db/ because db is the bottom layer that api, dispatcher and cli all depend on.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The least time a dispatcher allows its claims, records and heartbeats (seconds).
DISPATCHER_DB_SECONDS = 5.0


class Settings(BaseSettings):
    """Configuration of every timerhook process; each field is documented in README.md."""

    model_config = SettingsConfigDict(env_prefix="TIMERHOOK_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL 15+ URL; unset starts the embedded server."
    )
    data_dir: Path = Field(default=Path(".timerhook"), description="Embedded PostgreSQL data.")
    host: str = "127.0.0.1"
    auth: Literal["auto", "keys", "none"] = Field(
        default="auto",
        description="When API keys are required: auto (beyond loopback, or once any key "
        "exists), keys (always) or none (never).",
    )
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = Field(
        default="INFO",
        description="DEBUG logs a line per create and per attempt; INFO only "
        "failures and state changes.",
    )
    log_format: Literal["json", "text"] = Field(
        default="text", description="json: one JSON object per line (the Docker image's choice)."
    )
    access_log: bool = Field(
        default=False, description="Logs every HTTP request (uvicorn's access log)."
    )

    horizon_days: int = Field(default=365, ge=1, le=3650, description="Longest accepted delay.")
    retention_days: int = Field(default=7, ge=1, description="Days fired timers are kept.")
    idempotency_hours: int = Field(
        default=48, ge=24, description="How long an Idempotency-Key of a create is remembered."
    )
    shards: int = Field(default=16, ge=1, le=1024, description="Shards per one-second bucket.")

    max_per_minute: int = Field(
        default=0, ge=0, description="Global cap on webhooks per minute (0: none); seeds the cap."
    )
    signing_secret: str | None = Field(
        default=None,
        description="Standard Webhooks secret(s), 'whsec_' + base64; two space-separated during "
        "a rotation. Unset: requests are not signed.",
    )
    allow_private_targets: bool = False
    allowed_networks: str = Field(
        default="",
        description="Networks (CIDR, comma or space separated) webhooks may reach even though "
        "they are private, e.g. '10.20.0.0/16, fd00:1::/64'.",
    )
    http_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Whole-request timeout of a timer without one."
    )
    max_timeout_seconds: float = Field(
        default=60.0, gt=0, le=300, description="Longest per-timer timeout a create may ask for."
    )
    max_attempts: int = Field(
        default=8, ge=1, le=100, description="Attempts per round of a timer that names none."
    )
    retry_base_seconds: float = Field(
        default=60.0, gt=0, description="Backoff ceiling after the first failed attempt."
    )
    retry_max_seconds: float = Field(
        default=86_400.0, gt=0, description="Longest wait before a retry (Retry-After included)."
    )
    max_payload_bytes: int = Field(
        default=65_536, ge=16, le=1_048_576, description="Largest payload, as compact JSON."
    )
    max_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=64 * 1_048_576,
        description="Largest request body; larger ones get 413 before they are read whole. "
        "Default: TIMERHOOK_MAX_PAYLOAD_BYTES plus 32 KiB (96 KiB).",
    )
    max_batch_body_bytes: int = Field(
        default=8 * 1_048_576,
        ge=1024,
        le=256 * 1_048_576,
        description="Largest body of POST /timer/batch (up to 1,000 timers); larger ones get "
        "413 before they are read whole.",
    )
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes `timerhook api` runs on its port (`--workers N`).",
    )
    dispatcher_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Dispatcher processes `timerhook dispatcher` runs (one core each at most).",
    )
    concurrency: int = Field(default=256, ge=1, le=10_000, description="Sends in flight.")
    host_concurrency: int = Field(
        default=128,
        ge=1,
        le=10_000,
        description="Sends in flight to one target host per dispatcher (at most concurrency).",
    )
    circuit_failures: int = Field(
        default=5, ge=1, le=1000, description="Consecutive no-answer failures that open a circuit."
    )
    circuit_seconds: float = Field(
        default=30.0, gt=0, description="First cool-down of an open circuit; doubles each time."
    )
    circuit_max_seconds: float = Field(
        default=600.0, gt=0, description="Longest cool-down of an open circuit."
    )
    batch_size: int = Field(default=1000, ge=1, le=50_000, description="Rows per claim.")
    lease_seconds: float = Field(default=90.0, ge=5)
    tick_seconds: float = Field(default=1.0, gt=0, le=60)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    dead_after_seconds: float = Field(default=10.0, gt=0)
    shutdown_grace_seconds: float = Field(default=15.0, ge=0)
    pool_size: int = Field(default=8, ge=1, le=200)
    db_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Longest wait for the database per request, statements included: past "
        "it, API requests answer 503 with Retry-After (a frozen database too). A dispatcher "
        "allows its claims and records at least DISPATCHER_DB_SECONDS (5 s), then tries "
        "again at its next pass.",
    )
    statement_timeout_seconds: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="Longest statement or idle transaction, enforced by the server, and the "
        "client-side bound of maintenance work (partitions for the whole horizon, purges).",
    )
    create_queue_max: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Creates waiting for their INSERT; past it, creates answer 503 with "
        "Retry-After at once (overload shedding).",
    )
    create_batch_max: int = Field(
        default=256, ge=1, le=5000, description="Creates per INSERT (group commit); 1: none."
    )

    @field_validator("signing_secret")
    @classmethod
    def _check_secrets(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        secrets = value.split()
        if len(secrets) > 2:
            raise ValueError("at most two signing secrets (the new one and the old one)")
        for secret in secrets:
            if not secret.startswith("whsec_"):
                raise ValueError("a signing secret starts with 'whsec_' followed by base64")
            try:
                key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                raise ValueError("a signing secret's part after 'whsec_' must be base64") from None
            if len(key) < 24:
                raise ValueError("a signing secret must hold at least 24 random bytes")
        return " ".join(secrets)

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for entry in value.replace(",", " ").split():
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not a network (write it like 10.20.0.0/16)"
                ) from None
        return value

    @cached_property
    def allowed_network_list(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """TIMERHOOK_ALLOWED_NETWORKS, parsed."""
        entries = self.allowed_networks.replace(",", " ").split()
        return [ipaddress.ip_network(e, strict=False) for e in entries]

    @property
    def body_limit(self) -> int:
        """TIMERHOOK_MAX_BODY_BYTES, or the default derived from the payload limit: room for
        the largest payload as UTF-8 JSON, the URL (2 KiB) and the headers (16 KiB). It also
        bounds the work of one body: the worst shapes under 96 KiB parse in about 20 ms."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_payload_bytes + 32 * 1024

    @property
    def claim_window_seconds(self) -> float:
        """How far ahead the dispatchers claim (dispatcher/claimer.py): every slot that can
        fall due before the tick after next, so a row is in hand at least one tick before its
        time and the claim's own duration never makes it late."""
        return self.tick_seconds + 1.5

    @property
    def wake_within_ms(self) -> int:
        """A create whose timer falls due sooner than this wakes the dispatchers at once: the
        claim window, in which their next tick may come too late."""
        return round(self.claim_window_seconds * 1000)

    @property
    def dispatcher_db_timeout(self) -> float:
        """The bound of a dispatcher's claim, record or heartbeat: the database timeout, but
        at least DISPATCHER_DB_SECONDS, so a commit slowed by load is not abandoned (an
        abandoned claim's rows wait for the renewal to give them back)."""
        return max(self.db_timeout_seconds, DISPATCHER_DB_SECONDS)

    @property
    def signing_secrets(self) -> list[str]:
        """The active signing secrets, newest first (empty: requests are not signed)."""
        return self.signing_secret.split() if self.signing_secret else []

    @model_validator(mode="after")
    def _check_liveness(self) -> Settings:
        if self.dead_after_seconds <= self.heartbeat_seconds * 2:
            raise ValueError(
                "dead_after_seconds must exceed twice heartbeat_seconds, "
                "or live dispatchers would be declared dead between two heartbeats"
            )
        if self.lease_seconds <= max(self.http_timeout_seconds, self.max_timeout_seconds):
            raise ValueError(
                "lease_seconds must exceed http_timeout_seconds and max_timeout_seconds, "
                "so that a send in progress never outlives the lease it was claimed under "
                "before its first renewal"
            )
        return self

    @property
    def hostname(self) -> str:
        """This machine's name, as the dispatcher registry records it."""
        return socket.gethostname()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
