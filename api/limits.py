"""The request body limit, as a bare ASGI middleware: a body over the limit is refused with
413 (problem+json) from its Content-Length before any of it is read, and a body without one
(chunked) as soon as what arrived passes the limit, never read whole. A path may have its own
limit (POST /timer/batch carries up to a thousand timers)."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import BODY_SETTING, too_large


class BodyTooLarge(HTTPException):
    """The body passed the limit while it was being read."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(status_code=413, detail="Content Too Large")
        self.limit = limit
        self.setting = setting


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes, or over the limit ``paths`` gives their
    path ((limit, the setting that sets it)); api/problems.py words the 413."""

    def __init__(
        self, app: ASGIApp, *, limit: int, paths: Mapping[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.paths = dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.paths.get(scope["path"], (self.limit, BODY_SETTING))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await too_large(limit, setting)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
