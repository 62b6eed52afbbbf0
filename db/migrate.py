"""Forward-only migrations: a fresh database gets schema.sql, an older one its missing steps.

Safe when several processes start at once: the whole run holds one advisory lock inside one
transaction (PostgreSQL DDL is transactional), so the second process waits, then finds
nothing left to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import psycopg
from psycopg import sql

from db.query_loader import query

log = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One file of db/migrations/."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration, in version order."""
    found = []
    for entry in resources.files("db").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must run 1..n without gaps, found {versions}")
    return found


@cache
def latest_version() -> int:
    """The newest migration this code has (read from the package once)."""
    return migrations()[-1].version


def schema_sql() -> str:
    """The whole current schema."""
    return resources.files("db").joinpath("schema.sql").read_text()


async def migrate(conninfo: str, *, from_schema: bool = True) -> list[str]:
    """Brings the database to the current schema; returns the names of the steps applied.

    ``from_schema=False`` forces the step-by-step road on a fresh database (tests compare it
    with the schema.sql road).
    """
    steps = migrations()
    applied_now: list[str] = []
    connect = psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    async with await connect as conn, conn.transaction():
        await conn.execute(query("migration_lock"))
        await conn.execute(query("migration_ledger_create"))
        cur = await conn.execute(query("migration_versions"))
        done = {row[0] for row in await cur.fetchall()}
        if not done and from_schema:
            await conn.execute(sql.SQL(schema_sql()))
            for step in steps:
                await _record(conn, step)
            applied_now.append("schema.sql")
        else:
            for step in steps:
                if step.version not in done:
                    await conn.execute(sql.SQL(step.sql))
                    await _record(conn, step)
                    applied_now.append(f"{step.version:04d}_{step.name}")
    if applied_now:
        log.info("database migrated: %s", ", ".join(applied_now))
    return applied_now


async def _record(conn: psycopg.AsyncConnection[tuple[int]], step: Migration) -> None:
    await conn.execute(query("migration_record"), {"version": step.version, "name": step.name})
