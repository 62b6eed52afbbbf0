"""API keys and tenants: who may call the API, and each tenant's quotas and signing secret.

A key is ``thk_`` and 43 URL-safe characters (256 random bits); only its SHA-256 is stored,
so a leaked database does not leak working keys. The hash of so much randomness needs no
slow password hash.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
from collections.abc import Sequence

import psycopg
from psycopg.rows import TupleRow

from db.connection import PoolOwner
from db.models import ApiKey, QuotaRefusal, Tenant, ValidKey
from db.query_loader import query

log = logging.getLogger(__name__)

KEY_PREFIX = "thk_"
# A tenant's name: what timers, caps and keys are keyed by.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_TENANT = "default"
# Retry-After of a create refused by a max-pending quota: pending timers leave as they fire,
# which the API cannot foresee.
PENDING_RETRY_SECONDS = 5


def key_hash(key: str) -> str:
    """What is stored of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def valid_tenant(name: str) -> bool:
    """Whether ``name`` can name a tenant: 1 to 64 of letters, digits, ``.``, ``_``, ``-``."""
    return TENANT_NAME.fullmatch(name) is not None


class KeyStore(PoolOwner):
    """Creates, lists, revokes and checks API keys."""

    async def create(self, *, tenant: str, admin: bool, label: str | None) -> tuple[str, str]:
        """A new key for ``tenant``; returns its id and the key itself (shown once)."""
        key_id = f"key_{secrets.token_hex(6)}"
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        await self.run(
            "key_insert",
            {"id": key_id, "key_hash": key_hash(key), "tenant": tenant, "admin": admin,
             "label": label},
        )  # fmt: skip
        log.info("API key %s created for tenant %s%s", key_id, tenant, " (admin)" if admin else "")
        return key_id, key

    async def list(self) -> list[ApiKey]:
        """Every key, newest first (revoked ones too)."""
        return await self.fetch_all("key_list", ApiKey, {})

    async def revoke(self, key_id: str) -> bool:
        """Revokes a key; False if there is no such unrevoked key."""
        done = await self.run("key_revoke", {"id": key_id}) > 0
        if done:
            log.info("API key %s revoked", key_id)
        return done

    async def valid(self) -> Sequence[ValidKey]:
        """Every valid (unrevoked) key, by its hash."""
        return await self.fetch_all("key_valid_list", ValidKey, {})

    async def used(self, ids: Sequence[str]) -> None:
        """Notes the use of these keys (``last_used_at``)."""
        if ids:
            await self.run("key_used", {"ids": list(ids)})

    async def any(self) -> bool:
        """Whether any key was ever made."""
        rows = await self.rows("key_any", {})
        return bool(rows and rows[0][0])


class TenantStore(PoolOwner):
    """Tenants' quotas and signing secrets."""

    async def set(
        self,
        name: str,
        *,
        max_pending: int | None = None,
        creates_per_minute: int | None = None,
        max_payload_bytes: int | None = None,
        signing_secret: str | None = None,
    ) -> None:
        """Creates or changes a tenant's settings: None leaves one as it is, 0 (or ``""``)
        removes it."""
        await self.run(
            "tenant_set",
            {"name": name, "max_pending": max_pending, "creates_per_minute": creates_per_minute,
             "max_payload_bytes": max_payload_bytes, "signing_secret": signing_secret},
        )  # fmt: skip
        log.info("tenant %s settings changed", name)

    async def list(self) -> list[Tenant]:
        """Every tenant that has settings."""
        return await self.fetch_all("tenant_list", Tenant, {})

    async def secrets(self) -> dict[str, str]:
        """The tenants that sign with secrets of their own, and those secrets."""
        return {t.name: t.signing_secret for t in await self.list() if t.signing_secret}


async def take_create_quota(
    conn: psycopg.AsyncConnection[TupleRow], tenant: str, *, count: int = 1
) -> QuotaRefusal | None:
    """Inside a create's transaction: checks the tenant's max-pending and creates-per-minute
    quotas for ``count`` new timers (a batch counts each) under its row's lock and spends as
    many creates tokens; the refusal, or None when the create may go on. A refusal rolls the
    transaction back, so nothing is written."""
    cur = await conn.execute(query("tenant_create_take"), {"tenant": tenant})
    row = await cur.fetchone()
    if row is None:
        return None
    max_pending, per_minute, available = row
    if max_pending is not None:
        # prepared at once (a generic plan, kept per connection): a fresh plan would weigh
        # every partition
        cur = await conn.execute(
            query("tenant_pending_count"), {"tenant": tenant, "limit": max_pending}, prepare=True
        )
        counted = await cur.fetchone()
        pending = counted[0] if counted is not None else 0
        if pending + count > max_pending:
            more = f" and {count} more cannot fit" if count > 1 else ""
            return QuotaRefusal(
                "max_pending",
                f"tenant {tenant} has {pending} pending timers{more}: at most {max_pending}, "
                "its max-pending quota, may be pending",
                PENDING_RETRY_SECONDS,
            )
    if per_minute is not None:
        if count > per_minute:
            return QuotaRefusal(
                "creates_per_minute",
                f"a batch of {count} timers is more than tenant {tenant} may create in a minute "
                f"({per_minute}, its creates-per-minute quota); send smaller batches",
                60,
            )
        if available + 1e-9 < count:
            wait = max(1, math.ceil((count - available) * 60 / per_minute))
            return QuotaRefusal(
                "creates_per_minute",
                f"tenant {tenant} may create {per_minute} timers per minute (its "
                "creates-per-minute quota)",
                wait,
            )
        await conn.execute(
            query("tenant_create_spend"), {"tenant": tenant, "left": available - count}
        )
    return None
