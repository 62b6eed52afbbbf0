"""Ownership: whether this dispatcher may still send what it holds, and whether a peer is dead.

Both are judged on this process's monotonic clock, never by comparing database timestamps
after the fact (docs/architecture.md, "The claim protocol"):

- ``Ownership`` knows until when the leases this dispatcher holds are safe: from the start of
  its last heartbeat that the database confirmed (``lease_renew``), for less than
  ``dead_after_seconds`` (a peer needs that long of watching an unchanged heartbeat to declare
  it dead) and less than the lease. A send checks ``safe()`` at the last moment before its
  request goes out; past that instant it waits for the next confirmation.
- ``PeerWatch`` declares a peer dead once it has seen the peer's heartbeat unchanged for
  ``dead_after_seconds`` over reads that came at most ``max_gap`` apart. A longer gap (this
  process paused, the database stalled, a read that hung) starts every count again, so
  neither an observer's own pause nor a database freeze ever makes a live peer dead. A peer
  registered on this host, in this PID namespace, whose process no longer exists is dead at
  once (a restart after a crash takes over without waiting): that is observed too, and a
  paused process still exists.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from datetime import datetime

from db.models import PeerBeat

# What is kept back from the safe window, as a share of the shorter of dead_after_seconds and
# the lease: a pause up to that long between the last check and the request's bytes leaving
# stays inside what a peer waits before it may take over.
MARGIN_SHARE = 0.3


class Ownership:
    """Until when this dispatcher's leases are safe, on its monotonic clock."""

    def __init__(self, *, dead_after_seconds: float, lease_seconds: float) -> None:
        self.window = (1 - MARGIN_SHARE) * min(dead_after_seconds, lease_seconds)
        self.safe_until = float("-inf")
        self._confirmed = asyncio.Event()

    def confirmed(self, started: float) -> None:
        """The database confirmed this dispatcher alive (and its leases renewed) by a
        statement that started at ``started`` (monotonic)."""
        self.safe_until = max(self.safe_until, started + self.window)
        self._confirmed.set()
        self._confirmed = asyncio.Event()

    def lost(self) -> None:
        """A peer declared this dispatcher dead: nothing it holds is safe any more."""
        self.safe_until = float("-inf")

    def safe(self) -> bool:
        """Whether a request may go out now under the leases held."""
        return time.monotonic() < self.safe_until

    async def wait_safe(self) -> None:
        """Returns once a send may go out again (at the next confirmation, at the latest)."""
        while not self.safe():
            await self._confirmed.wait()


@dataclass(slots=True)
class _Seen:
    beat: datetime  # the heartbeat value, compared for change only
    since: float  # monotonic instant of the read that first saw it


def pid_namespace() -> str | None:
    """This process's PID namespace (the inode /proc/self/ns/pid names), None if unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_gone(peer: PeerBeat, host: str, pidns: str | None) -> bool:
    """Whether the peer ran on this host, in this PID namespace, and its process is gone
    (a pid reused since only makes it look alive: the heartbeat watch decides then)."""
    if pidns is None or peer.pidns != pidns or peer.host != host or peer.pid <= 0:
        return False
    try:
        os.kill(peer.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


class PeerWatch:
    """Declares peers dead by what this process observed of their heartbeats."""

    def __init__(
        self, *, owner: str, dead_after_seconds: float, max_gap: float, host: str = "",
        pidns: str | None = None,
    ) -> None:  # fmt: skip
        self.owner = owner
        self.host = host
        self.pidns = pidns
        self.dead_after = dead_after_seconds
        self.max_gap = max_gap
        self._seen: dict[str, _Seen] = {}
        self._last_read: float | None = None

    def reset(self) -> None:
        """Forgets every count (this process could not read the registry in time)."""
        self._seen.clear()
        self._last_read = None

    def observe(self, beats: list[PeerBeat], at: float) -> list[tuple[str, datetime]]:
        """One read of the registry that returned at ``at`` (monotonic); returns the peers now
        dead, each with the heartbeat seen unchanged (the reap takes them only while it is
        still that one)."""
        if self._last_read is None or at - self._last_read > self.max_gap:
            self._seen.clear()  # not watching normally until now: every count starts again
        self._last_read = at
        seen: dict[str, _Seen] = {}
        for peer in beats:
            if peer.id == self.owner:
                continue
            before = self._seen.get(peer.id)
            keep = before is not None and before.beat == peer.heartbeat_at
            seen[peer.id] = before if keep and before else _Seen(peer.heartbeat_at, at)
        self._seen = seen
        gone = {
            p.id for p in beats if p.id != self.owner and process_gone(p, self.host, self.pidns)
        }
        return [
            (p, s.beat) for p, s in seen.items() if p in gone or at - s.since >= self.dead_after
        ]
