"""Sends one webhook: ``POST <url>`` with ``{"id": "<timer id>"}`` (plus ``"payload"`` when the
timer has one), and says what happened in terms the retry policy understands."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from core.targets import (
    Networks,
    host_of,
    netloc_address,
    netloc_of,
    netloc_problem,
    refused_kind,
    refused_reason,
)
from db.models import ClaimedTimer
from dispatcher.curl import CurlClient
from dispatcher.retry import Failure, parse_retry_after

log = logging.getLogger(__name__)

USER_AGENT = "timerhook/0.1"
# Error texts are cut to this many characters before they are stored.
ERROR_CHARS = 500
# Of a failed answer's body, at most this much is read (into the error text); the rest of it
# is never read, so a huge or endless body cannot stall a send. A 2xx body is not read at all.
BODY_READ_CAP = 256


_BASE_HEADERS = [
    f"User-Agent: {USER_AGENT}", "Content-Type: application/json",
    "Expect:",  # no 100-continue round trip before a large body
]  # fmt: skip


def _with_own(own: dict[str, str]) -> list[str]:
    """The base headers with a timer's own (which replace a base one of the same name)."""
    names = {name.lower() for name in own}
    base = [h for h in _BASE_HEADERS if h.split(":", 1)[0].lower() not in names]
    return base + [f"{name}: {value}" for name, value in own.items()]


@dataclass(frozen=True, slots=True)
class Result:
    """What a send ended in: delivered, or a failure; the status and error if any; how long
    it took."""

    status: int | None
    error: str | None
    latency_ms: float | None
    failure: Failure | None = None  # None: delivered (2xx)

    @property
    def delivered(self) -> bool:
        """The target answered 2xx."""
        return self.failure is None


def body_of(timer: ClaimedTimer) -> bytes:
    """The request body: exactly ``{"id": "<timer id>"}``, or with the timer's payload
    ``{"id": "<timer id>", "payload": <payload>}``. An occurrence of a recurring timer names
    its series and its number: ``{"id": "<series id>", "occurrence": <n>}`` (and payload)."""
    if timer.series_id is not None:
        ident = json.dumps({"id": str(timer.series_id), "occurrence": timer.occurrence})
    else:
        ident = json.dumps({"id": str(timer.id)})
    if timer.payload is None:
        return ident.encode()
    return f'{ident[:-1]}, "payload": {timer.payload}}}'.encode()


class Sender:
    """One libcurl multi handle (dispatcher/curl.py) for all sends of a dispatcher; open with
    ``await start()``."""

    def __init__(
        self,
        *,
        timeout_seconds: float,
        concurrency: int,
        allow_private: bool,
        signing_secrets: list[str] | None = None,
        allowed_networks: Networks = (),
    ) -> None:
        self._allowed = allowed_networks
        self._timeout_seconds = timeout_seconds
        self._signers = [Webhook(secret) for secret in signing_secrets or []]
        # Tenants with secrets of their own: their webhooks are signed with those only.
        self._tenant_signers: dict[str, list[Webhook]] = {}
        self._tenant_secrets: dict[str, str] = {}
        self._concurrency = concurrency
        self._allow_private = allow_private
        self._client: CurlClient | None = None
        self._refused = functools.lru_cache(maxsize=4096)(self._refused_uncached)

    async def start(self) -> None:
        """Opens the client; every connection's address is checked unless private targets
        are allowed."""
        self._client = CurlClient(
            connections=self._concurrency,
            body_cap=BODY_READ_CAP,
            guard=None if self._allow_private else self._guard,
        )

    async def close(self) -> None:
        """Ends the client and its connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _guard(self, url: str, address: str) -> str | None:
        """Why libcurl may not connect to the address a URL's host resolved to, or None."""
        kind = refused_kind(ipaddress.ip_address(address), self._allowed)
        if kind is None:
            return None
        return (
            f"target refused: {host_of(url)} resolves to a {kind} address "
            "(TIMERHOOK_ALLOW_PRIVATE_TARGETS=1 allows)"
        )

    async def send(self, timer: ClaimedTimer) -> Result:
        """POSTs the webhook once; never raises for the target's or the network's failures."""
        assert self._client is not None, "Sender.start() was not awaited"
        started = time.monotonic()
        refused = self._refused(netloc_of(timer.url))
        if refused is not None:
            return self._failed(started, None, refused, refused=True, connected=False)
        body = body_of(timer)
        headers = _BASE_HEADERS if not timer.headers else _with_own(timer.headers)
        # the row's id: one per occurrence of a series, the same on every retry of it
        headers = [*headers, f"Idempotency-Key: {timer.id}", f"Timerhook-Attempt: {timer.attempts}"]
        if timer.request_id is not None:
            headers.append(f"Timerhook-Request-Id: {timer.request_id}")
        signers = (
            self._tenant_signers.get(timer.tenant, self._signers)
            if self._tenant_signers
            else self._signers
        )
        if signers:
            headers += [f"{k}: {v}" for k, v in self._signature(timer, body, signers).items()]
        seconds = self._timeout_seconds if timer.timeout_ms is None else timer.timeout_ms / 1000
        started = time.monotonic()
        reply = await self._client.post(timer.url, body, headers, max(1, round(seconds * 1000)))
        status = reply.status
        if status is not None:
            if 200 <= status < 300:
                return Result(status, None, (time.monotonic() - started) * 1000)
            excerpt = " ".join(
                reply.excerpt.decode("utf-8", "replace").replace("\x00", " ").split()
            )
            error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
            retry_after = parse_retry_after(reply.retry_after)
            return self._failed(started, status, error, retry_after=retry_after)
        if reply.refused is not None:
            return self._failed(started, None, reply.refused, refused=True, connected=False)
        if reply.timed_out:
            if not reply.connected:
                return self._failed(started, None, "timeout while connecting", connected=False)
            return self._failed(started, None, f"timeout after {seconds} s")
        error = f"{reply.error or 'transfer failed'} (curl error {reply.error_code})"
        return self._failed(started, None, error, connected=reply.connected)

    def _refused_uncached(self, netloc: str) -> str | None:
        """Why a URL with this netloc may not be sent to at all, before any connection: a
        malformed or non-canonical host (stored before creates checked it), or a refused
        literal address. Names are checked by the resolver, on the address they resolve to.
        Cached per netloc as ``_refused`` (the settings it reads are fixed)."""
        problem = netloc_problem(netloc)
        if problem is not None:
            return f"target refused: the URL's host {problem}"
        address = None if self._allow_private else netloc_address(netloc)
        reason = refused_reason(address, self._allowed) if address is not None else None
        if reason is not None:
            return f"target refused: {reason} (TIMERHOOK_ALLOW_PRIVATE_TARGETS=1 allows)"
        return None

    def set_tenant_secrets(self, found: dict[str, str]) -> None:
        """The tenants' own signing secrets (``whsec_...``, two space-separated during a
        rotation); a tenant not named uses the global secret."""
        if found == self._tenant_secrets:
            return
        self._tenant_secrets = dict(found)
        self._tenant_signers = {
            tenant: [Webhook(s) for s in secrets.split()] for tenant, secrets in found.items()
        }

    def _signature(
        self, timer: ClaimedTimer, body: bytes, signers: list[Webhook]
    ) -> dict[str, str]:
        """Standard Webhooks headers: the id is the timer's (the same on every attempt), the
        signature v1 HMAC-SHA256 over id.timestamp.body, one per active secret."""
        msg_id = str(timer.id)
        now = datetime.now(UTC)
        text = body.decode()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(s.sign(msg_id, now, text) for s in signers),
        }

    @staticmethod
    def _failed(
        started: float, status: int | None, error: str, *,
        connected: bool = True, refused: bool = False, retry_after: float | None = None,
    ) -> Result:  # fmt: skip
        latency = (time.monotonic() - started) * 1000
        # Logged by the recorder, which knows what the failure makes of the timer.
        failure = Failure(status, connected=connected, refused=refused, retry_after=retry_after)
        return Result(status, error[:ERROR_CHARS], latency, failure)
