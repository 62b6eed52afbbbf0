"""``timerhook dispatcher --processes N``: N dispatcher processes from one command, so that one
machine's cores are all used (one dispatcher is one Python process, one core at most).

The parent prepares once (migrations, partitions, the embedded server and its supervisor when
no URL is set), then runs N children, each a plain ``timerhook dispatcher`` on the database
URL: they register, claim and send exactly as separately started dispatchers do, so nothing
about the claim protocol changes. The parent restarts a child that dies (after 1 s, doubling
to 30 s while it keeps dying), logs each exit once, and on SIGTERM or SIGINT passes the
signal on and waits for every child's clean stop (their grace period plus 15 s, then SIGKILL:
their leases are reaped by the others)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger(__name__)

# A child that dies is started again after this long, doubling while it keeps dying.
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
# A child that ran this long before dying counts as healthy: its next restart waits the least.
HEALTHY_AFTER_SECONDS = 60.0


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_FIRST_SECONDS
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)


class Fleet:
    """N ``timerhook dispatcher`` children on ``database_url``; ``run()`` until signalled."""

    def __init__(self, count: int, database_url: str, *, grace_seconds: float) -> None:
        self.count = count
        self.env = {**os.environ, "TIMERHOOK_DATABASE_URL": database_url,
                    "TIMERHOOK_DISPATCHER_PROCESSES": "1"}  # fmt: skip
        self.grace_seconds = grace_seconds
        self.children = [_Child(slot) for slot in range(count)]
        self._stop = threading.Event()

    def _start(self, child: _Child) -> None:
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "dispatcher"], env=self.env
        )
        child.started = time.monotonic()
        child.restart_at = None
        log.info("dispatcher process %d of %d started (pid %d)",
                 child.slot + 1, self.count, child.proc.pid)  # fmt: skip

    def _signalled(self, signum: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def run(self) -> int:
        """Starts the children, keeps them running until SIGTERM or SIGINT, then stops them;
        0 when every child stopped cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signalled)
        for child in self.children:
            self._start(child)
        while not self._stop.wait(0.2):
            self._watch()
        return self._stop_all()

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                child.exits.append(code)
                child.proc = None
                if now - child.started >= HEALTHY_AFTER_SECONDS:
                    child.backoff = RESTART_FIRST_SECONDS
                child.restart_at = now + child.backoff
                log.error(
                    "dispatcher process %d of %d exited with %s; starting it again in %.0f s",
                    child.slot + 1, self.count, _exit_text(code), child.backoff,
                )  # fmt: skip
                child.backoff = min(child.backoff * 2, RESTART_MAX_SECONDS)
            elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self._start(child)

    def _stop_all(self) -> int:
        running = [c.proc for c in self.children if c.proc is not None]
        log.info("stopping %d dispatcher processes", len(running))
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + 15
        codes = []
        for proc in running:
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("dispatcher process %d did not stop in time; killed", proc.pid)
                proc.kill()
                codes.append(proc.wait())
        return 0 if all(code == 0 for code in codes) else 1


def _exit_text(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
