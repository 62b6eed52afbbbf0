"""Who is calling: API keys, tenants, and when keys are required (``TIMERHOOK_AUTH``).

- ``none``: never; every caller acts as an admin of the tenant ``default`` (a warning at
  every start when the API listens beyond loopback).
- ``keys``: always.
- ``auto`` (the default): whenever the API listens on a non-loopback address, and as soon as
  any key was ever made; on loopback with no key yet the API stays open, as before keys.

A key given on an open API still counts (its tenant, its rights), and an unknown key is a
401 whatever the mode. Each API process holds every valid key's SHA-256 in memory, reloaded
every KEY_CACHE_SECONDS (one statement, whatever the number of callers), so that a check
costs no round trip and a revoke takes effect within that time. A key not in memory (made
since the last load, or bad) waits for one more load, shared by every such key at once and
run at most every MISS_RELOAD_SECONDS: a flood of distinct bad keys costs no statement each
and evicts nothing. The health checks and the dashboard's page (not its data) are never behind
a key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException, Request

from db.access import DEFAULT_TENANT, key_hash
from db.database import Database
from db.models import Tenant

log = logging.getLogger(__name__)

AuthMode = Literal["auto", "keys", "none"]

# How long the valid keys loaded are believed; a revoke takes effect within this.
KEY_CACHE_SECONDS = 5.0
# The least time between two loads of the valid keys made for keys not found.
MISS_RELOAD_SECONDS = 0.5
# How long "no key exists yet" is believed (auto mode on loopback).
ANY_KEY_SECONDS = 2.0
# How long tenants' quotas are believed by an API process.
TENANT_CACHE_SECONDS = 5.0

CREATE_KEY_HINT = (
    "create one with `timerhook keys create --tenant NAME --admin` and send it as "
    "'Authorization: Bearer <key>'"
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Whom a request speaks for: a tenant, and whether it may act on every tenant."""

    tenant: str
    admin: bool
    key_id: str | None = None

    @property
    def scope(self) -> str | None:
        """The tenant its reads and changes are confined to (None: every tenant)."""
        return None if self.admin else self.tenant


OPEN = Principal(DEFAULT_TENANT, admin=True)


def is_loopback(host: str) -> bool:
    """Whether the API's listening address reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


class Access:
    """Decides each request's Principal; one per API process."""

    def __init__(self, db: Database, *, mode: AuthMode, host: str) -> None:
        self.db = db
        self.mode = mode
        self.loopback = is_loopback(host)
        # Every valid key's SHA-256 -> whom it speaks for, as loaded at _loaded_at
        self._keys: dict[str, Principal] = {}
        self._loaded_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None
        self._used: set[str] = set()  # key ids checked since the last load
        self.loads = 0  # loads of the valid keys so far (each one statement)
        self._any_key: tuple[float, bool] = (0.0, False)
        self._tenants: tuple[float, dict[str, Tenant]] = (0.0, {})
        self._tenant_lock = asyncio.Lock()

    async def announce(self) -> None:
        """Says at start-up how callers are admitted (and how to get a key if none exists)."""
        if self.mode == "none":
            if not self.loopback:
                log.warning(
                    "TIMERHOOK_AUTH=none on a non-loopback address: anyone who reaches the port "
                    "can create, read and cancel every timer"
                )
            return
        if self.mode == "auto" and self.loopback and not await self._keys_exist():
            log.info("no API key exists: the API is open on loopback until one is made")
            return
        if not await self._keys_exist():
            log.warning("API keys are required and none exists yet: %s", CREATE_KEY_HINT)

    async def principal(self, request: Request) -> Principal:
        """The caller, from ``Authorization: Bearer <key>``; 401 when a key is required and
        missing, or given and not valid."""
        if self.mode == "none":
            return OPEN
        header = request.headers.get("authorization")
        if header is None:
            if self.mode == "auto" and self.loopback and not await self._keys_exist():
                return OPEN
            if not await self._keys_exist():
                raise _unauthorized(
                    f"an API key is required and none exists yet: {CREATE_KEY_HINT}"
                )
            raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>'")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        found = await self._check(key)
        if found is None:
            raise _unauthorized("the API key is not valid (unknown or revoked)")
        return found

    async def _check(self, key: str) -> Principal | None:
        hashed = key_hash(key)
        if time.monotonic() - self._loaded_at >= KEY_CACHE_SECONDS:
            await self._load(0.0)
        found = self._keys.get(hashed)
        if found is None:
            # made since the last load, or bad: one more load, shared, at most so often
            await self._load(MISS_RELOAD_SECONDS)
            found = self._keys.get(hashed)
        if found is not None:
            if found.key_id is not None:
                self._used.add(found.key_id)
            self._any_key = (time.monotonic() + ANY_KEY_SECONDS, True)
        return found

    async def _load(self, spacing: float) -> None:
        """Loads the valid keys, ``spacing`` seconds after the last load at the earliest;
        callers at the same time share one load."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._reload(spacing))
        loading = self._loading
        try:
            await asyncio.shield(loading)
        finally:
            if self._loading is loading and loading.done():
                self._loading = None

    async def _reload(self, spacing: float) -> None:
        wait = self._loaded_at + spacing - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        started = time.monotonic()
        valid = await self.db.keys.valid()
        self._keys = {k.key_hash: Principal(k.tenant, k.admin, k.id) for k in valid}
        self._loaded_at = started
        self.loads += 1
        used = sorted(self._used)
        if used:
            await self.db.keys.used(used)
            self._used.difference_update(used)

    async def _keys_exist(self) -> bool:
        until, known = self._any_key
        if known or until > time.monotonic():
            return known  # once a key exists, keys exist: revoking them does not reopen
        known = await self.db.keys.any()
        self._any_key = (time.monotonic() + ANY_KEY_SECONDS, known)
        return known

    async def tenant(self, name: str) -> Tenant | None:
        """A tenant's quotas and secret (None: it has none), as of at most
        TENANT_CACHE_SECONDS ago."""
        until, found = self._tenants
        if until <= time.monotonic():
            async with self._tenant_lock:
                until, found = self._tenants
                if until <= time.monotonic():
                    found = {t.name: t for t in await self.db.tenants.list()}
                    self._tenants = (time.monotonic() + TENANT_CACHE_SECONDS, found)
        return found.get(name)
