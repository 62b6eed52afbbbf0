"""Per-host limits and circuit breakers: a slow or failing target host cannot hold up the
others.

``HostGate`` caps the sends in flight to one host in this dispatcher
(``TIMERHOOK_HOST_CONCURRENCY``); rows over the limit wait in priority order without taking
a slot of the dispatcher's overall concurrency. ``Breaker`` is the pure state machine of a
host's circuit: consecutive failures that say the host is not answering (no connection, a
timeout) open it for a cool-down that doubles each time it opens again; after the cool-down
one probe goes through, and a success closes it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field

from core.targets import host_of

__all__ = ["Breaker", "HostGate", "Trip", "host_of"]


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, float, int]
    future: asyncio.Future[None] = field(compare=False)
    item: object = field(compare=False, default=None)  # what waits (a row), for reports
    since: float = field(compare=False, default=0.0)  # monotonic instant it began to wait
    noted: bool = field(compare=False, default=False)


class HostGate:
    """At most ``limit`` sends in flight per host; waiters get slots highest priority first,
    then earliest due, then first come."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, int] = {}
        self._waiters: dict[str, list[_Waiter]] = {}
        self._waiting: dict[str, int] = {}  # waiters not yet granted nor cancelled, per host
        self._seq = itertools.count()
        self._probe: set[str] = set()  # hosts in half-open state: one send at a time

    def limit_of(self, host: str) -> int:
        """The limit that applies to a host now (1 while its circuit is being probed)."""
        return 1 if host in self._probe else self.limit

    def set_probing(self, host: str, probing: bool) -> None:
        """Half-open: only one send at a time to this host until one succeeds."""
        if probing:
            self._probe.add(host)
        elif host in self._probe:
            self._probe.discard(host)
            self._hand_on(host)

    def active(self, host: str) -> int:
        """Sends in flight to a host."""
        return self._active.get(host, 0)

    def waiting(self, host: str) -> int:
        """Sends waiting for a slot of a host."""
        return self._waiting.get(host, 0)

    def full(self, host: str) -> bool:
        """Whether a new send to this host would have to wait."""
        return self._active.get(host, 0) >= self.limit_of(host)

    async def acquire(self, host: str, *, priority: int, due: float, item: object = None) -> None:
        """Takes a slot of the host, waiting in rank order if it is full (or others wait)."""
        if host not in self._waiting and self._active.get(host, 0) < self.limit_of(host):
            self._active[host] = self._active.get(host, 0) + 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter((-priority, due, next(self._seq)), future, item, time.monotonic())
        heapq.heappush(self._waiters.setdefault(host, []), waiter)
        self._waiting[host] = self._waiting.get(host, 0) + 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(host)  # granted just as it was cancelled: pass the slot on
            else:
                self._count_out(host)
            raise

    def waited(self, longer_than: float) -> list[tuple[str, object]]:
        """The items that have waited longer than ``longer_than`` seconds and were not
        reported yet, with their host; each is reported once."""
        cutoff = time.monotonic() - longer_than
        found = []
        for host, queue in self._waiters.items():
            for w in queue:
                if not w.noted and w.since < cutoff and not w.future.done():
                    w.noted = True
                    found.append((host, w.item))
        return found

    def _count_out(self, host: str) -> None:
        left = self._waiting.get(host, 1) - 1
        if left:
            self._waiting[host] = left
        else:
            self._waiting.pop(host, None)

    def release(self, host: str) -> None:
        """Gives a slot back; the best-ranked waiter gets it."""
        self._active[host] = self._active.get(host, 1) - 1
        self._hand_on(host)

    def _hand_on(self, host: str) -> None:
        queue = self._waiters.get(host)
        while queue and self._active.get(host, 0) < self.limit_of(host):
            waiter = heapq.heappop(queue)
            if waiter.future.done():
                continue  # cancelled: counted out already
            self._active[host] = self._active.get(host, 0) + 1
            self._count_out(host)
            waiter.future.set_result(None)
        if not self._active.get(host):
            self._active.pop(host, None)
        if queue is not None and not queue:
            self._waiters.pop(host, None)


@dataclass(frozen=True, slots=True)
class Trip:
    """A circuit to open: for how long, after how many failures, and why."""

    seconds: float
    failures: int
    reason: str


class Breaker:
    """Counts consecutive host failures; says when to open a circuit and when it closed."""

    def __init__(self, *, threshold: int, base_seconds: float, max_seconds: float) -> None:
        self.threshold = threshold
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self._failures: dict[str, int] = {}
        self._trips: dict[str, int] = {}

    def failure(self, host: str, error: str, *, circuit_open: bool = False) -> Trip | None:
        """A send to the host failed without an answer; a Trip when the circuit must open
        (the threshold reached, or a probe after a cool-down failed). Failures of sends that
        were already under way when it opened (``circuit_open``) only count."""
        count = self._failures.get(host, 0) + 1
        self._failures[host] = count
        if count < self.threshold or circuit_open:
            return None
        trips = self._trips.get(host, 0) + 1
        self._trips[host] = trips
        seconds = min(self.base_seconds * 2 ** (trips - 1), self.max_seconds)
        return Trip(seconds, count, f"{count} consecutive failures, the last: {error}")

    def success(self, host: str) -> bool:
        """The host answered; True if that closes a circuit that had opened."""
        self._failures.pop(host, None)
        return self._trips.pop(host, None) is not None

    @property
    def counting(self) -> bool:
        """Whether any host has failures or an open circuit (else a success changes nothing)."""
        return bool(self._failures or self._trips)

    def tripped(self, host: str) -> bool:
        """Whether the host's circuit opened and has not closed since."""
        return host in self._trips
