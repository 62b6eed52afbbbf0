"""wrk, the compiled HTTP load generator the create benches use: found on PATH, or installed
with apt-get when this is root on Debian or Ubuntu (the bench's own set-up), else a clear
message. A Python load generator would cost as much CPU as the API it loads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


def ensure() -> str:
    """The wrk binary, installed first if it is missing and can be."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk with apt-get (the create benches' load generator)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(
                command, env=env, check=False, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit("wrk is missing: install it (apt-get install wrk, brew install wrk)")


@dataclass(frozen=True)
class Result:
    requests_per_s: float
    requests: int
    refused: int  # answers that were not 2xx (or connection errors)


def post(
    url: str, body: str, *, seconds: float, connections: int = 64, threads: int = 1,
    headers: dict[str, str] | None = None,
) -> Result:  # fmt: skip
    """``connections`` keep-alive connections POSTing ``body`` to ``url`` for ``seconds``."""
    lines = ['wrk.method = "POST"', f"wrk.body = [[{body}]]",
             'wrk.headers["Content-Type"] = "application/json"']  # fmt: skip
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            [ensure(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "-s", script.name, url],  # wrk takes whole seconds
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
    finally:
        os.unlink(script.name)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise RuntimeError(f"wrk said something unexpected:\n{out}")
    errors = re.findall(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += re.findall(r"Socket errors: connect (\d+)", out)
    return Result(float(rate.group(1)), int(total.group(1)), sum(int(n) for n in errors))
