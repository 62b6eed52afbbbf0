"""Logging for every timerhook process: JSON lines or text, with the context that applies.

The context of a line is its request id (set per HTTP request by the API's middleware, in a
context variable) and whatever the call site passes as ``extra``: ``timer_id``,
``dispatcher_id``, ``attempt``, ``target_host``. ``timer_context(...)`` builds that ``extra``
for a timer, request id included, so that one grep for a request id or a timer id follows a
timer from its create to its last attempt, in the API and in the dispatcher.

Lives in db/ because it is the bottom layer that api, dispatcher and cli all share.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]

# The X-Request-ID of the request being served (None outside a request).
request_id_var: ContextVar[str | None] = ContextVar("timerhook_request_id", default=None)

# The context fields a line may carry, in the order text lines show them.
CONTEXT_FIELDS = ("request_id", "timer_id", "dispatcher_id", "attempt", "target_host")


def target_host(url: str) -> str:
    """The host of a URL (never its path or query string, which may hold secrets)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def timer_context(
    timer_id: object,
    *,
    request_id: str | None = None,
    dispatcher_id: str | None = None,
    attempt: int | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a log line about one timer."""
    extra: dict[str, Any] = {"timer_id": str(timer_id)}
    if request_id is not None:
        extra["request_id"] = request_id
    if dispatcher_id is not None:
        extra["dispatcher_id"] = dispatcher_id
    if attempt is not None:
        extra["attempt"] = attempt
    if url is not None:
        extra["target_host"] = target_host(url)
    return extra


class _RequestContext(logging.Filter):
    """Adds the request id of the request being served to a line that names none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class _TextFormatter(logging.Formatter):
    """``time level logger: message`` followed by the context fields the line carries."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        return f"{text} [{' '.join(context)}]" if context else text


def formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter of a log format: JSON lines (python-json-logger) or text."""
    if fmt == "json":
        return JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601 in UTC, to the microsecond
            json_ensure_ascii=False,
            # uvicorn adds its message again with terminal colours: not for a log pipeline
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure(level: str, fmt: LogFormat) -> None:
    """Sends every logger (uvicorn's included) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(_RequestContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers reach the root handler (log_config=None leaves them unconfigured).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # APScheduler logs every tick at INFO: once a second per process is noise, not news.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
