"""Sends one webhook: ``POST <url>`` with ``{"id": "<timer id>"}`` (plus ``"payload"`` when the
timer has one), and says what happened in terms the retry policy understands."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook

from db.models import ClaimedTimer
from db.targets import netloc_address, netloc_of, netloc_problem, refused_reason
from dispatcher.guard import GuardedResolver, Networks, TargetRefused
from dispatcher.retry import Failure, parse_retry_after

log = logging.getLogger(__name__)

USER_AGENT = "timerhook/0.1"
# Error texts are cut to this many characters before they are stored.
ERROR_CHARS = 500
# Of a failed answer's body, at most this much is read (into the error text); the rest of it
# is never read, so a huge or endless body cannot stall a send. A 2xx body is not read at all.
BODY_READ_CAP = 256


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
    """One aiohttp session for all sends of a dispatcher; open with ``await start()``."""

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
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._signers = [Webhook(secret) for secret in signing_secrets or []]
        # Tenants with secrets of their own: their webhooks are signed with those only.
        self._tenant_signers: dict[str, list[Webhook]] = {}
        self._tenant_secrets: dict[str, str] = {}
        self._concurrency = concurrency
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None
        self._refused = functools.lru_cache(maxsize=4096)(self._refused_uncached)

    async def start(self) -> None:
        """Creates the session; the resolver guards targets unless private ones are allowed."""
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=0,
            resolver=None if self._allow_private else GuardedResolver(allowed=self._allowed),
            ttl_dns_cache=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )

    async def close(self) -> None:
        """Closes the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, timer: ClaimedTimer) -> Result:
        """POSTs the webhook once; never raises for the target's or the network's failures."""
        assert self._session is not None, "Sender.start() was not awaited"
        started = time.monotonic()
        refused = self._refused(netloc_of(timer.url))
        if refused is not None:
            return self._failed(timer, started, None, refused, refused=True, connected=False)
        body = body_of(timer)
        headers = dict(timer.headers) if timer.headers else {}
        # the row's id: one per occurrence of a series, the same on every retry of it
        headers["Idempotency-Key"] = str(timer.id)
        headers["Timerhook-Attempt"] = str(timer.attempts)
        if timer.request_id is not None:
            headers["Timerhook-Request-Id"] = timer.request_id
        signers = (
            self._tenant_signers.get(timer.tenant, self._signers)
            if self._tenant_signers
            else self._signers
        )
        if signers:
            headers.update(self._signature(timer, body, signers))
        timeout = self._timeout
        if timer.timeout_ms is not None:
            timeout = aiohttp.ClientTimeout(total=timer.timeout_ms / 1000)
        started = time.monotonic()
        try:
            async with self._session.post(
                timer.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                status = response.status
                latency = (time.monotonic() - started) * 1000
                if 200 <= status < 300:
                    return Result(status, None, latency)
                # Only the start of a failed answer's body is read, for the error text.
                excerpt = await _excerpt(response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TargetRefused):
                return self._failed(
                    timer, started, None, str(exc.os_error), refused=True, connected=False
                )
            return self._failed(timer, started, None, f"{type(exc).__name__}: {exc}",
                                connected=False)  # fmt: skip
        except aiohttp.ConnectionTimeoutError:
            return self._failed(timer, started, None, "timeout while connecting", connected=False)
        except TimeoutError:
            return self._failed(timer, started, None, f"timeout after {timeout.total} s")
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            return self._failed(timer, started, None, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            raise
        error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        return self._failed(timer, started, status, error, retry_after=retry_after)

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
        timer: ClaimedTimer, started: float, status: int | None, error: str, *,
        connected: bool = True, refused: bool = False, retry_after: float | None = None,
    ) -> Result:  # fmt: skip
        latency = (time.monotonic() - started) * 1000
        # Logged by the recorder, which knows what the failure makes of the timer.
        failure = Failure(status, connected=connected, refused=refused, retry_after=retry_after)
        return Result(status, error[:ERROR_CHARS], latency, failure)


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    """The start of an answer's body as one line of text (BODY_READ_CAP bytes at most)."""
    try:
        raw = await asyncio.wait_for(response.content.read(BODY_READ_CAP), 1.0)
    except (TimeoutError, aiohttp.ClientError):
        return ""
    return " ".join(raw.decode("utf-8", "replace").split())
