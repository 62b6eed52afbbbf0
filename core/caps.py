"""Per-minute caps as the planner and the API reason about them: the scopes' names, the
capped tenants and hosts, the streams of the capped pass, and a take's grant. Plain values;
the buckets themselves are in PostgreSQL (db/caps.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

GLOBAL = "global"
TENANT = "tenant:"  # + the tenant's name
HOST = "host:"  # + the host as a URL names it, lower case, without brackets or port


@dataclass(frozen=True, slots=True)
class Cap:
    """A per-minute cap, the tokens its bucket holds now, and when a take last found it
    short (it bound)."""

    scope: str
    per_minute: int
    tokens: float
    short_at: datetime | None = None


def scopes_of(tenant: str, host: str) -> list[str]:
    """Every cap scope that applies to a timer of ``tenant`` to ``host``: the global cap, its
    tenant's and its host's (each applies only where it is set)."""
    return [GLOBAL, TENANT + tenant, HOST + host]


@dataclass(frozen=True, slots=True)
class Grant:
    """Tokens granted by a cap, and the cap itself (0: none)."""

    granted: int
    per_minute: int
    # The binding bucket's fill before the take (tokens), and the local monotonic instant
    # its answer came: when each granted token was minted, for pacing the capped streams.
    available: float = 0.0
    answered_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CappedScopes:
    """The tenants and hosts that have a cap of their own: their rows go out through the
    capped pass, with tokens from every cap that applies, never through the key claims."""

    tenants: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tenants or self.hosts)

    def params(self) -> dict[str, object]:
        """As the claim queries take them."""
        return {"capped_tenants": list(self.tenants), "capped_hosts": list(self.hosts)}


NO_CAPPED = CappedScopes()


@dataclass(frozen=True, slots=True)
class CappedStream:
    """One stream of the capped pass: a capped tenant, a capped host, or both (None where the
    stream has none), and the cap scopes its tokens come from."""

    tenant: str | None
    host: str | None

    @property
    def scopes(self) -> list[str]:
        """Every cap that applies to the stream's rows (the global one too)."""
        found = [GLOBAL]
        if self.tenant is not None:
            found.append(TENANT + self.tenant)
        if self.host is not None:
            found.append(HOST + self.host)
        return found


def stream_scopes(stream: CappedStream | None) -> list[str]:
    """The caps a claim's tokens come from: a capped stream's, or the global cap alone."""
    return stream.scopes if stream is not None else [GLOBAL]


def cap_turn(scopes: Sequence[str], caps: Mapping[str, Cap], now: datetime) -> str | None:
    """Why a due timer that no dispatcher has claimed waits for a cap, or None: the first cap
    of ``scopes`` (those that apply to it) that binds, that is, whose last take (the planner's)
    was short of what the dispatchers asked for, within two of its tokens' intervals (two
    seconds at least) before ``now`` (the database clock). The tokens a bucket holds
    meanwhile are not free for this timer: the dispatchers keep half a second of sends in hand
    and take the next tokens at their turn."""
    for scope in scopes:
        cap = caps.get(scope)
        if cap is None or not cap.per_minute or cap.short_at is None:
            continue
        window = 2 * max(1.0, 60 / cap.per_minute)
        if (now - cap.short_at).total_seconds() <= window:
            return cap_wait([scope], cap.per_minute)
    return None


def cap_wait(scopes: Sequence[str], per_minute: int | None = None) -> str:
    """Why a due timer waits for a cap: ``global cap: 60/min, no token left now`` (the rate
    where one cap is named and its rate is known); a stream under several caps names each
    (``tenant:a cap, global cap: no token left now``)."""
    named = ", ".join(f"{scope} cap" for scope in scopes)
    rate = f" {per_minute}/min," if per_minute and len(scopes) == 1 else ""
    return f"{named}:{rate} no token left now"
