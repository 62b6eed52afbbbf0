"""Sends one webhook: ``POST <url>`` with ``{"id": "<timer id>"}``, and classifies the outcome."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook
from yarl import URL

from db.models import ClaimedTimer, TimerState
from dispatcher.guard import GuardedResolver, Networks, TargetRefused, check_literal

log = logging.getLogger(__name__)

USER_AGENT = "timerhook/0.1"
_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class Result:
    """What a send ended in: a final state, the HTTP status if any, and an error text if any."""

    state: TimerState
    status: int | None
    error: str | None


def body_of(timer: ClaimedTimer) -> bytes:
    """The request body: exactly ``{"id": "<timer id>"}``."""
    return json.dumps({"id": str(timer.id)}).encode()


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
        self._concurrency = concurrency
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

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
        body = body_of(timer)
        headers = {"Idempotency-Key": str(timer.id), "Timerhook-Attempt": str(timer.attempts)}
        if self._signers:
            headers.update(self._signature(timer, body))
        try:
            if not self._allow_private:
                check_literal(URL(timer.url).host or "", self._allowed)
            async with self._session.post(
                timer.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                # The body is not read: only the status matters, and a huge body must not stall us.
        except TargetRefused as exc:
            return self._failed(timer, None, str(exc))
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, TargetRefused) else exc
            return self._failed(timer, None, f"{type(cause).__name__}: {cause}")
        except TimeoutError:
            return self._failed(timer, None, f"timeout after {self._timeout.total} s")
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            return self._failed(timer, None, f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            raise
        if 200 <= status < 300:
            return Result("delivered", status, None)
        return self._failed(timer, status, f"HTTP {status}")

    def _signature(self, timer: ClaimedTimer, body: bytes) -> dict[str, str]:
        """Standard Webhooks headers: the id is the timer's (the same on every attempt), the
        signature v1 HMAC-SHA256 over id.timestamp.body, one per active secret."""
        msg_id = str(timer.id)
        now = datetime.now(UTC)
        text = body.decode()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(s.sign(msg_id, now, text) for s in self._signers),
        }

    @staticmethod
    def _failed(timer: ClaimedTimer, status: int | None, error: str) -> Result:
        log.warning("webhook %s to %s failed: %s", timer.id, timer.url, error)
        return Result("failed", status, error[:_ERROR_CHARS])
