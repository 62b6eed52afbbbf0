"""The fault checker's short form: a minute of real processes under a seeded schedule of
faults (kills, pauses, a frozen and a restarted PostgreSQL), then the whole history checked
(bench/faults.py). The seed is printed; a failing one reproduces the same schedule."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.long(seconds=90), pytest.mark.timeout(360)]


def test_a_minute_of_faults_loses_nothing_sends_nothing_early_or_twice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = random.randrange(1_000_000)
    done = subprocess.run(
        # a 30-day horizon: the horizon is not what this checks, and each restarted process
        # starts faster on it (the bench's own default is 365 days)
        [sys.executable, "-m", "bench.faults", "--seconds", "60", "--seed", str(seed),
         "--horizon-days", "30"],
        capture_output=True, text=True, timeout=330, check=False,
    )  # fmt: skip
    with capsys.disabled():  # the seed, the faults and the figures, in every run
        print("\n" + done.stdout)  # noqa: T201
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every check held" in done.stdout
