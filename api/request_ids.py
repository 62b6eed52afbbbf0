"""Request ids, as a bare ASGI middleware: the client's ``X-Request-ID`` is kept when it is a
sane token (else one is made), set as the logging context of the request, echoed in the
response, and stored with a timer the request creates (then sent with each of its webhooks as
``Timerhook-Request-Id``)."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logs import request_id_var

HEADER = b"x-request-id"
# What a client's id may be: up to 128 characters that need no quoting in logs or headers.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's if it is sane, else a new random one (32 hex digits)."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    return os.urandom(16).hex()


class RequestIds:
    """Gives every HTTP request an id, in the logging context and the response headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        encoded = request_id.encode("ascii")
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((HEADER, encoded))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
