"""Request and response bodies, per resource: TimerCreate in, TimerPublic out."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, NoReturn

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from api.problems import FieldError
from core.ids import parse_series_id, parse_timer_id
from core.recurrence import Misfire, ScheduleError, first_cron_time
from core.settings import Settings
from core.states import DeadLetterState, TimerState
from core.targets import host_problem, literal_refused
from db.models import Delivery

MAX_URL_LENGTH = 2048
MAX_HEADERS = 32
MAX_HEADER_VALUE = 4096
MAX_HEADER_BYTES = 16_384  # names and values together, as most servers accept at most
# Header names a timer may not set: hop-by-hop headers (RFC 9110 section 7.6.1), the ones that
# frame the request, and the ones timerhook itself sends (signature, idempotency, attempt).
REFUSED_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
    "host", "content-length", "content-type", "content-encoding", "expect",
    "webhook-id", "webhook-timestamp", "webhook-signature", "idempotency-key",
})  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
MAX_PAYLOAD_DEPTH = 32
MAX_CRON_LENGTH = 200
# The most occurrences a series may ask for (its occurrence numbers are PostgreSQL integers).
MAX_COUNT = 1_000_000_000
MAX_WINDOW_SECONDS = 7 * 86_400
MAX_AFTER = 32
MAX_EVERY_SECONDS = 3650 * 86_400
MAX_RESOURCES = 16
RESOURCE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 1, 10, 5


# A JSON string literal, and an array or object with no container inside (after strings are
# blanked out): the depth check peels one level per pass, in C, never recursing in Python.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_INNERMOST = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def compact_json(value: object) -> str:
    """The value as compact JSON text, refusing what JSON text in PostgreSQL cannot hold (NUL,
    lone surrogates, non-finite numbers) and more than MAX_PAYLOAD_DEPTH nested arrays and
    objects. Every step runs in C over the text, so the cost is a few nanoseconds per byte
    whatever the shape (a walk in Python took 1 microsecond per item)."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("numbers must be finite (no NaN or Infinity)") from None
    except RecursionError:
        raise ValueError(f"is nested deeper than {MAX_PAYLOAD_DEPTH} levels") from None
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("strings must be valid Unicode (no lone surrogates)") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise ValueError("strings must not contain NUL (\\u0000)")
    skeleton = _STRING.sub("0", text)
    for _ in range(MAX_PAYLOAD_DEPTH):
        if "[" not in skeleton and "{" not in skeleton:
            return text
        skeleton = _INNERMOST.sub("0", skeleton)
    if "[" in skeleton or "{" in skeleton:
        raise ValueError(f"is nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    return text


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("strings must not contain NUL (\\u0000)")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("strings must be valid Unicode (no lone surrogates)") from None


_http_url: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


@lru_cache(maxsize=4096)
def url_problem(value: str) -> str | None:
    """Why a timer's URL is refused, or None. A pure function of the text, cached: a batch or
    a stream of creates names few distinct URLs, each checked once."""
    if value != value.strip() or _SPACE_OR_CONTROL.search(value):
        return "must not contain spaces or control characters"
    try:
        _check_text(value)
    except ValueError as exc:
        return str(exc)
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https"):
        return "must be an absolute http:// or https:// URL"
    try:
        parsed = _http_url.validate_python(value)
    except ValueError:
        return "must be an absolute http:// or https:// URL with a host"
    if not parsed.host:
        return "must name a host"
    problem = host_problem(value)
    if problem is not None:
        return f"the host {problem}"
    return None


_ISO_DURATION = re.compile(
    r"P(?:(\d{1,6})W)?(?:(\d{1,6})D)?(?:T(?:(\d{1,7})H)?(?:(\d{1,9})M)?(?:(\d{1,10}(?:\.\d{1,3})?)S)?)?"
)


def iso_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration of fixed length (weeks, days, hours, minutes, seconds to the
    millisecond) such as 'PT15M' or 'P1DT12H'; None when ``text`` is not one."""
    match = _ISO_DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        return None
    weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


_datetime: TypeAdapter[datetime] = TypeAdapter(datetime)


def _refuse_period() -> NoReturn:
    raise ValueError("must be whole seconds (a number) or an ISO 8601 duration string")


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
    # Any, not JsonValue: the body was JSON already, and compact_json checks what PostgreSQL
    # can store at a fraction of the cost of validating every item (docs/operations.md).
    payload: Any = Field(
        default=None,
        description='Any JSON value, sent as {"id": ..., "payload": ...}; null or absent sends '
        'exactly {"id": ...}. At most TIMERHOOK_MAX_PAYLOAD_BYTES as compact JSON.',
    )
    headers: dict[str, str] | None = Field(
        default=None,
        description=f"Extra request headers (at most {MAX_HEADERS}, {MAX_HEADER_BYTES} characters "
        "in all); hop-by-hop, framing, "
        "signature and timerhook's own headers are refused.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Whole-request timeout of each attempt; default TIMERHOOK_HTTP_TIMEOUT_SECONDS,"
        " at most TIMERHOOK_MAX_TIMEOUT_SECONDS.",
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Attempts before the timer is dead; default TIMERHOOK_MAX_ATTEMPTS (8).",
    )
    delivery: Delivery = Field(
        default="at_least_once",
        description="at_least_once: a send whose outcome was lost is repeated; at_most_once: "
        "it is not, and the timer fails instead.",
    )
    priority: int = Field(
        default=PRIORITY_DEFAULT,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        description="1 to 10, higher first: when more is due than may be sent now (a cap, a "
        "host limit or a resource binds), higher priority goes first, then the earlier due time."
        " Without contention it changes nothing.",
    )
    resources: list[str] | None = Field(
        default=None,
        description=f"Up to {MAX_RESOURCES} names (1 to 64 of letters, digits, '.', '_', ':', "
        "'-'). Two timers of one tenant that share a name are never in flight at the same time"
        " (each tenant's names are its own).",
    )
    at: datetime | None = Field(
        default=None,
        description="An absolute due time, RFC 3339 with a UTC offset (2026-12-24T18:00:00+01:00),"
        " instead of hours/minutes/seconds; not in the past.",
    )
    every: int | str | None = Field(
        default=None,
        description="Recurring: repeat every this many whole seconds (1 to 10 years), or an ISO "
        "8601 duration such as 'PT15M'. The first occurrence is at the delay or `at`.",
    )
    cron: str | None = Field(
        default=None,
        max_length=MAX_CRON_LENGTH,
        description="Recurring: a five-field crontab(5) expression (minute hour day-of-month "
        "month day-of-week; day of week 0 and 7 are Sunday), matched in `timezone`. The first "
        "occurrence is its first match at or after the delay or `at`.",
    )
    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="The IANA time zone `cron` is read in (default UTC); daylight-saving "
        "changes follow it.",
    )
    until: datetime | None = Field(
        default=None,
        description="Recurring: no occurrence after this instant (RFC 3339 with an offset); one"
        " exactly at it is sent.",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="Recurring: the most occurrences (numbered 1 to count), at most "
        f"{MAX_COUNT:,}.",
    )
    window: int | str | None = Field(
        default=None,
        description="An SLA window: whole seconds (1 to 604,800, 7 days) or an ISO 8601 "
        "duration ('PT30S', 'P1D'). The timer may be sent at any moment from its due time to "
        "due time + window, never before and never after; windowed timers are spread at the "
        "lowest steady rate that meets every deadline. A recurring timer gets it on each "
        "occurrence.",
    )
    after: list[str] | None = Field(
        default=None,
        description=f"Up to {MAX_AFTER} ids of existing one-shot timers (of the same tenant) "
        "this one runs after: it is sent once every one of them was delivered, and not before "
        "its own due time; if one of them ends failed, dead or cancelled, it fails at once.",
    )
    misfire: Misfire | None = Field(
        default=None,
        description="Recurring: what occurrences missed while nothing could send (downtime) "
        "become: 'coalesce' (default) sends one, numbered as the latest of them; 'all' sends "
        "each.",
    )

    @field_validator("at", "until", mode="before")
    @classmethod
    def _rfc3339_with_offset(cls, value: object) -> object:
        # Strict, but JSON has no date type: the text form only, and never a local time.
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("must be an RFC 3339 date-time string with a UTC offset")
        parsed = _datetime.validate_python(value)
        if parsed.tzinfo is None:
            raise ValueError("must include a UTC offset (Z or +hh:mm)")
        return parsed

    @field_validator("after")
    @classmethod
    def _dependencies(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_AFTER:
            raise ValueError(f"at most {MAX_AFTER} timers, not {len(value)}")
        found: list[str] = []
        for text in value:
            if parse_series_id(text) is not None:
                raise ValueError(
                    f"{text!r} is a recurring timer; only one-shot timers can be waited for"
                )
            parsed = parse_timer_id(text)
            if parsed is None:
                raise ValueError(f"{text[:80]!r} is not a timer id")
            if str(parsed) not in found:
                found.append(str(parsed))
        return found or None

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("must be whole seconds (a number) or an ISO 8601 duration string")
        if isinstance(value, int) and not 1 <= value <= MAX_WINDOW_SECONDS:
            raise ValueError(f"must be from 1 second to {MAX_WINDOW_SECONDS} seconds (7 days)")
        length = timedelta(seconds=value) if isinstance(value, int) else iso_duration(value)
        if length is None:
            raise ValueError(
                "must be whole seconds or an ISO 8601 duration such as 'PT30S' or 'P1D'"
            )
        if not timedelta(seconds=1) <= length <= timedelta(seconds=MAX_WINDOW_SECONDS):
            raise ValueError(f"must be from 1 second to {MAX_WINDOW_SECONDS} seconds (7 days)")
        return value

    @property
    def window_ms(self) -> int | None:
        """The SLA window in milliseconds (None: exact)."""
        if self.window is None:
            return None
        if isinstance(self.window, int):
            return self.window * 1000
        length = iso_duration(self.window)
        assert length is not None  # validated
        return round(length.total_seconds() * 1000)

    @field_validator("every", mode="before")
    @classmethod
    def _period(cls, value: object) -> object:
        if value is None:
            return value
        if isinstance(value, bool):
            _refuse_period()
        if isinstance(value, int):
            if not 1 <= value <= MAX_EVERY_SECONDS:
                raise ValueError(f"must be from 1 to {MAX_EVERY_SECONDS} seconds (10 years)")
            return value
        if isinstance(value, str):
            period = iso_duration(value)
            if period is None:
                raise ValueError(
                    "must be whole seconds or an ISO 8601 duration such as 'PT15M' "
                    "(weeks, days, hours, minutes, seconds; months and years have no fixed "
                    "length: use cron)"
                )
            if not timedelta(seconds=1) <= period <= timedelta(seconds=MAX_EVERY_SECONDS):
                raise ValueError(
                    "must be an ISO 8601 duration from one second ('PT1S') to 10 years"
                )
            return value
        _refuse_period()

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_RESOURCES:
            raise ValueError(f"at most {MAX_RESOURCES} resources, not {len(value)}")
        for name in value:
            if not RESOURCE_NAME.fullmatch(name):
                raise ValueError(
                    f"{name[:80]!r} is not a resource name: 1 to 64 letters, digits, '.', '_', "
                    "':' or '-'"
                )
        # Order and repeats mean nothing: stored sorted and distinct; an empty list is none.
        return sorted(set(value)) or None

    @field_validator("url")
    @classmethod
    def _absolute_http(cls, value: str) -> str:
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value  # stored exactly as given, not normalised

    # The payload's validator keeps its compact JSON in the validation context (the create
    # routes pass one), so that it is not encoded twice; see api/creating.py.
    @field_validator("payload")
    @classmethod
    def _storable_payload(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            text = compact_json(value)
            if isinstance(info.context, dict):
                info.context["payload_json"] = text
        return value

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        total = sum(len(name) + len(text) for name, text in value.items())
        if total > MAX_HEADER_BYTES:
            raise ValueError(
                f"names and values add up to {total} characters; at most {MAX_HEADER_BYTES}"
            )
        seen: set[str] = set()
        for name, text in value.items():
            lower = name.lower()
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if lower in seen:
                raise ValueError(f"{name!r} is given twice")
            seen.add(lower)
            if lower in REFUSED_HEADERS or lower.startswith("timerhook-"):
                raise ValueError(f"{name!r} may not be set: timerhook sends it or it is hop-by-hop")
            if len(text) > MAX_HEADER_VALUE or not _HEADER_VALUE.fullmatch(text):
                raise ValueError(
                    f"the value of {name!r} must be one line of printable ASCII, "
                    f"at most {MAX_HEADER_VALUE} characters"
                )
        return value

    @model_validator(mode="after")
    def _within_settings(self, info: ValidationInfo) -> TimerCreate:
        """The checks against the running settings, once every field is valid, when the
        caller passes them in the validation context (``settings``; ``now`` for a chosen
        instant): the schedule (``_check_when``) and the delivery (``_check_delivery``).
        They raise FieldError, which names the field (several, where they clash)."""
        context = info.context if isinstance(info.context, dict) else {}
        settings = context.get("settings")
        if settings is not None:
            _check_when(self, settings, context.get("now"))
            _check_delivery(self, context.get("payload_json"), settings)
        return self

    @property
    def delay_seconds(self) -> int:
        """The whole delay in seconds."""
        return self.hours * 3600 + self.minutes * 60 + self.seconds

    @property
    def every_ms(self) -> int | None:
        """The period of an ``every`` series in milliseconds (None: not one)."""
        if self.every is None:
            return None
        if isinstance(self.every, int):
            return self.every * 1000
        period = iso_duration(self.every)
        assert period is not None  # validated
        return round(period.total_seconds() * 1000)

    @property
    def recurring(self) -> bool:
        """Whether this create makes a series (``every`` or ``cron``)."""
        return self.every is not None or self.cron is not None


def _check_when(body: TimerCreate, settings: Settings, now: datetime | None) -> None:
    """Refuses what no schedule can mean: both an absolute time and a delay, a time in the
    past or past the horizon (the longest accepted delay), recurring fields on a one-shot
    timer, both every and cron, a cron or time zone that cannot be read. The API's clock
    only judges the input here; due times come from the database clock."""
    horizon = settings.horizon_days * 86_400
    now = now or datetime.now(UTC)
    delays = [name for name in ("hours", "minutes", "seconds") if name in body.model_fields_set]
    if body.at is not None:
        if delays:
            raise FieldError(
                ", ".join(["at", *delays]),
                "give either an absolute time (at) or a delay (hours, minutes, seconds), not both",
            )
        if body.at < now:
            raise FieldError(
                "at", f"is in the past ({body.at.isoformat()}; it is {now.isoformat()} now)"
            )
        if (body.at - now).total_seconds() > horizon:
            raise FieldError(
                "at",
                f"is more than {horizon} s ahead; the longest accepted delay is "
                f"{settings.horizon_days} days",
            )
    elif body.delay_seconds > horizon:
        raise FieldError(
            "hours, minutes, seconds",
            f"add up to {body.delay_seconds} s; the longest accepted delay is {horizon} s "
            f"({settings.horizon_days} days)",
        )
    if body.every is not None and body.cron is not None:
        raise FieldError("every, cron", "give one of them: a period (every) or a cron, not both")
    if body.after and body.recurring:
        raise FieldError("after", "a recurring timer cannot wait for other timers")
    if not body.recurring:
        for name in ("timezone", "until", "count", "misfire"):
            if getattr(body, name) is not None:
                raise FieldError(name, "applies only to a recurring timer (every or cron)")
        return
    if body.timezone is not None and body.cron is None:
        raise FieldError("timezone", "applies only to cron (an every series has no time zone)")
    if body.cron is not None:
        start = body.at or now + timedelta(seconds=body.delay_seconds)
        try:
            first = first_cron_time(
                body.cron, body.timezone or "UTC", start, now + timedelta(seconds=horizon)
            )
        except ScheduleError as exc:
            raise FieldError(exc.field, exc.reason) from None
        if first is None:
            raise FieldError(
                "cron",
                f"matches no time from the first due time to the horizon ({settings.horizon_days}"
                " days ahead, the longest accepted delay)",
            )
    if body.until is not None and body.until < now:
        raise FieldError("until", f"is in the past ({body.until.isoformat()})")


def _check_delivery(body: TimerCreate, payload_json: str | None, settings: Settings) -> None:
    """Refuses a target the settings do not allow, a payload over the size limit, and a
    timeout over the longest allowed."""
    if not settings.allow_private_targets:
        refused = literal_refused(body.url, settings.allowed_network_list)
        if refused is not None:
            raise FieldError(
                "url",
                f"{refused}, and private targets are not allowed "
                "(TIMERHOOK_ALLOW_PRIVATE_TARGETS=1 or TIMERHOOK_ALLOWED_NETWORKS allows them)",
            )
    if payload_json is not None:
        size = len(payload_json.encode())
        if size > settings.max_payload_bytes:
            raise FieldError(
                "payload",
                f"is {size} bytes as compact JSON; at most {settings.max_payload_bytes} allowed",
            )
    if body.timeout_seconds is not None and body.timeout_seconds > settings.max_timeout_seconds:
        raise FieldError(
            "timeout_seconds", f"must be at most {settings.max_timeout_seconds:g} seconds"
        )


class TimerPublic(BaseModel):
    """A timer as the contract shows it: its id and whole seconds left (0 once expired)."""

    id: uuid.UUID
    time_left: int = Field(ge=0, description="Whole seconds until due, rounded up; 0 once due.")


# The most timers one POST /timer/batch may carry.
BATCH_MAX = 1000


class TimerBatch(BaseModel):
    """POST /timer/batch: up to 1,000 timers, each as POST /timer takes it; all or none."""

    model_config = ConfigDict(extra="forbid")

    timers: list[TimerCreate] = Field(
        min_length=1, max_length=BATCH_MAX, description="The timers, created in this order."
    )


class TimerBatchCreated(BaseModel):
    """The timers of a batch, in the order they were given."""

    timers: list[TimerPublic]


class LastResult(BaseModel):
    """The outcome of the latest attempt."""

    at: datetime = Field(description="When the attempt was sent.")
    status_code: int | None = Field(description="The target's HTTP status; null if none came.")
    error: str | None = Field(description="Why it failed (null when delivered).")


Status = TimerState  # defined once, in core/states.py


class Dependency(BaseModel):
    """A timer another one waits for."""

    id: uuid.UUID
    status: Status


class TimerDetail(TimerPublic):
    """GET /timer/{id}: the contract's id and time_left, plus where the timer stands."""

    status: Status = Field(
        description="pending (waiting for its first send or a retry), inflight (being sent), "
        "delivered, failed (will not be retried), dead (out of attempts) or cancelled."
    )
    due_at: datetime = Field(description="The due time, to the millisecond (UTC).")
    attempts: int = Field(ge=0, description="How many times it was sent, requeues included.")
    last_result: LastResult | None = Field(description="The latest attempt; null before any.")
    url: str
    next_attempt_at: datetime | None = Field(
        description="When a pending timer is sent next (a retry's time after a failure)."
    )
    max_attempts: int = Field(description="Attempts per round (a round restarts on requeue).")
    delivery: Delivery
    payload: JsonValue = None
    headers: dict[str, str] | None = None
    timeout_seconds: float | None = None
    priority: int = Field(description="1 to 10, higher first under contention.")
    resources: list[str] | None = Field(
        default=None, description="Named resources no other timer holds while this one is sent."
    )
    waiting_on: str | None = Field(
        default=None,
        description="Why a due timer is not being sent yet: a cap, a resource and the timer "
        "holding it, a per-host limit or an open circuit; null when nothing holds it back.",
    )
    request_id: str | None = Field(
        default=None,
        description="The X-Request-ID of the create (given or generated), sent with every "
        "webhook as Timerhook-Request-Id.",
    )
    tenant: str = Field(
        default="default",
        description="The tenant it belongs to: the tenant of the API key that created it "
        "('default' when made without a key).",
    )
    kind: Literal["once"] = Field(
        default="once", description="'once': a one-shot timer (or one occurrence of a series)."
    )
    series_id: uuid.UUID | None = Field(
        default=None, description="For an occurrence of a recurring timer: the series' id."
    )
    occurrence: int | None = Field(
        default=None, description="For an occurrence: its number in the series, from 1."
    )
    deadline_at: datetime | None = Field(
        default=None,
        description="The end of its SLA window: it is sent between due_at and this (null: "
        "exactly at due_at).",
    )
    after: list[Dependency] | None = Field(
        default=None, description="The timers it runs after, with where each stands."
    )


SeriesStatus = Literal["active", "paused", "ended", "cancelled"]


class ScheduleOut(BaseModel):
    """When a recurring timer fires, as it was created."""

    every_seconds: float | None = Field(description="The period of an `every` series.")
    cron: str | None = Field(description="The crontab(5) expression of a `cron` series.")
    timezone: str = Field(description="The time zone `cron` is read in.")
    first_at: datetime = Field(description="Occurrence 1's time.")
    until: datetime | None
    count: int | None
    misfire: Misfire
    window_seconds: float | None = Field(
        default=None, description="Each occurrence's SLA window (null: exact)."
    )


class SeriesDetail(TimerPublic):
    """GET /timer/{id} of a recurring timer: the contract's id and time_left (to the next
    occurrence; 0 once the series ended or while it is paused), and the series."""

    kind: Literal["recurring"] = "recurring"
    status: SeriesStatus = Field(
        description="active, paused (POST /timer/{id}/resume goes on), ended (past until or "
        "count) or cancelled (DELETE)."
    )
    schedule: ScheduleOut
    occurrences_sent: int = Field(
        description="Occurrences handed to the dispatchers so far (each sent with its own "
        "attempts and retries; skipped and coalesced ones not counted)."
    )
    last_occurrence_at: datetime | None = Field(
        description="The due time of the latest occurrence already due."
    )
    next_occurrence_at: datetime | None = Field(
        description="The due time of the next occurrence (null while paused or once ended)."
    )
    next_occurrence: int | None = Field(
        description="The number the next occurrence will carry (null while paused or ended)."
    )
    url: str
    max_attempts: int
    delivery: Delivery
    payload: JsonValue = None
    headers: dict[str, str] | None = None
    timeout_seconds: float | None = None
    priority: int
    resources: list[str] | None = None
    request_id: str | None = None
    tenant: str = "default"
    created_at: datetime
    paused_at: datetime | None = None
    ended_at: datetime | None = None


class TimerSummary(BaseModel):
    """One timer in a listing."""

    id: uuid.UUID
    status: Status
    due_at: datetime
    url: str
    attempts: int
    max_attempts: int
    finished_at: datetime | None = Field(description="When it was delivered, failed or died.")
    last_result: LastResult | None
    priority: int
    resources: list[str] | None = None
    tenant: str = "default"
    kind: Literal["once"] = "once"
    series_id: uuid.UUID | None = Field(
        default=None, description="For an occurrence of a recurring timer: the series' id."
    )
    occurrence: int | None = None


class SeriesSummary(BaseModel):
    """One recurring timer in a listing (?kind=recurring)."""

    id: uuid.UUID
    kind: Literal["recurring"] = "recurring"
    status: SeriesStatus
    url: str
    schedule: ScheduleOut
    occurrences_sent: int
    next_occurrence_at: datetime | None
    priority: int
    tenant: str = "default"


class TimerList(BaseModel):
    """GET /timer: a page of timers in due order (or, with ?kind=recurring, of recurring
    timers in the order of their first times), and the cursor of the next page."""

    items: list[TimerSummary | SeriesSummary]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class AttemptPublic(BaseModel):
    """One attempt to send a timer."""

    attempt: int = Field(description="1 for the first send; counts on across requeues.")
    at: datetime = Field(description="When the request went out.")
    status_code: int | None = Field(description="The HTTP status; null when none came.")
    latency_ms: float | None = Field(description="From sending to the answer (or the error).")
    error: str | None = Field(description="What went wrong (cut to 500 characters).")
    dispatcher: str = Field(description="The dispatcher that made the attempt.")


class AttemptList(BaseModel):
    """GET /timer/{id}/attempts."""

    id: uuid.UUID
    attempts: list[AttemptPublic]


class RequeueRequest(BaseModel):
    """POST /timer/requeue: which dead letters to put back; {} takes every one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("finished_after", "finished_before", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # Strict, but JSON has no date type: the text form only (no Unix numbers).
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("must be an RFC 3339 date-time string")
        return _datetime.validate_python(value)

    @field_validator("url_prefix")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        # PostgreSQL text holds neither NUL nor a lone surrogate: refused here, not a 500.
        if value is not None:
            _check_text(value)
        return value

    status: list[DeadLetterState] = Field(
        default=["dead", "failed"], min_length=1, description="Which final states to requeue."
    )
    url_prefix: str | None = Field(
        default=None, min_length=1, description="Only timers whose URL starts with this."
    )
    finished_after: datetime | None = Field(default=None, description="Ended at or after this.")
    finished_before: datetime | None = Field(default=None, description="Ended before this.")
    limit: int | None = Field(default=None, ge=1, description="Requeue at most this many.")


class RequeueDone(BaseModel):
    """How many timers a requeue put back."""

    requeued: int
