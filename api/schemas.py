"""Request and response bodies, per resource: TimerCreate in, TimerPublic out."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

MAX_URL_LENGTH = 2048

_http_url: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


class TimerCreate(BaseModel):
    """``POST /timer``: call ``url`` after hours + minutes + seconds."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"hours": 4, "minutes": 0, "seconds": 1, "url": "https://someserver.com"}]
        },
    )

    hours: int = Field(default=0, ge=0, description="Whole hours of delay.")
    minutes: int = Field(default=0, ge=0, description="Whole minutes of delay.")
    seconds: int = Field(default=0, ge=0, description="Whole seconds of delay.")
    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description='Absolute http(s) URL that receives POST {"id": ...} when the timer fires.',
    )

    @field_validator("url")
    @classmethod
    def _absolute_http(cls, value: str) -> str:
        if value != value.strip() or any(ord(c) < 33 or c == "\x7f" for c in value):
            raise ValueError("must not contain spaces or control characters")
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme not in ("http", "https"):
            raise ValueError("must be an absolute http:// or https:// URL")
        try:
            parsed = _http_url.validate_python(value)
        except ValueError:
            raise ValueError("must be an absolute http:// or https:// URL with a host") from None
        if not parsed.host:
            raise ValueError("must name a host")
        return value  # stored exactly as given, not normalised

    @property
    def delay_seconds(self) -> int:
        """The whole delay in seconds."""
        return self.hours * 3600 + self.minutes * 60 + self.seconds


class TimerPublic(BaseModel):
    """A timer as the contract shows it: its id and whole seconds left (0 once expired)."""

    id: uuid.UUID
    time_left: int = Field(ge=0, description="Whole seconds until due, rounded up; 0 once due.")


class LastResult(BaseModel):
    """The outcome of the latest attempt."""

    at: datetime = Field(description="When the attempt was sent.")
    status_code: int | None = Field(description="The target's HTTP status; null if none came.")
    error: str | None = Field(description="Why it failed (null when delivered).")


class TimerDetail(TimerPublic):
    """GET /timer/{id}: the contract's id and time_left, plus where the timer stands."""

    status: str = Field(
        description="pending, inflight (being sent), delivered, failed or cancelled."
    )
    due_at: datetime = Field(description="The due time, to the millisecond (UTC).")
    attempts: int = Field(ge=0, description="How many times it was sent.")
    last_result: LastResult | None = Field(description="The latest attempt; null before any.")
