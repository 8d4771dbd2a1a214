"""Issue 8's acceptance: four worker processes, one token, one Redis, the emulator on loopback.

Each worker runs 50 concurrent tasks through its own ``AsyncClient``. With
the Redis backend the workers together never put more than the limit into any
window, get no 429, and the full server windows take at least 95 % of what
the workers offered them (each its calls and those the governor held past its
end, at most the limit): a CPU-starved runner asks for less, but the governor
may not hold back what a window had room for. The same run with
in-memory backends shows why Redis is needed: each worker believes it has the
whole quota (its 429s and bans are printed, not asserted away).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from apientreprise_async.testing import Emulator

from ._redis_server import redis_server
from ._redis_worker import share_of_offer
from .conftest import ROOT, TOKEN

# A 'minute' of three seconds: 83 calls per second through four full clients and
# the emulator is what a shared 2-vCPU CI runner sustains while other jobs run;
# at 1.0 s the measured throughput reflects the runner's CPU, not the governor.
PERIOD = 3.0
LIMIT = 250  # the JSON group
WORKERS = 4
TASKS = 50
MEASURED = 4  # periods over which throughput is measured


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's redis-server, killed at teardown."""
    with redis_server() as url:
        yield url


def run_workers(url: str, backend: str, **options: Any) -> list[dict[str, Any]]:
    """Start the workers, let them all go at once, collect their reports."""
    processes = []
    for index in range(WORKERS):
        argv = [sys.executable, "-m", "tests._redis_worker", "--url", url, "--token", TOKEN]
        argv += ["--backend", backend, "--index", str(index), "--workers", str(WORKERS)]
        argv += ["--tasks", str(TASKS), "--period", str(PERIOD)]
        for name, value in options.items():
            argv += [f"--{name}", str(value)]
        processes.append(
            subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        )
    try:
        for process in processes:
            assert process.stdout is not None
            assert "ready" == process.stdout.readline().strip()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=60)
            assert 0 == process.returncode
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def throughput(emulator: Emulator) -> float:
    """Calls arrived in the first ``MEASURED`` periods, divided by what the limit allows."""
    arrivals = sorted(r.monotonic for r in emulator.calls(token=TOKEN))
    start = arrivals[0]
    inside = sum(1 for t in arrivals if t < start + MEASURED * PERIOD)
    return inside / (MEASURED * LIMIT)


def report(capsys: pytest.CaptureFixture[str], title: str, text: str) -> None:
    """Print to the terminal even when output is captured."""
    with capsys.disabled():
        print(f"\n[{title}] {text}")


def test_four_workers_on_redis_stay_under_the_limit_with_full_throughput(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No window over the limit, zero 429, >= 0.95 of the offer taken by the full windows."""
    emulator = Emulator(period=PERIOD)
    emulator.add_token(TOKEN)
    calls = (MEASURED * LIMIT + LIMIT // 2) // WORKERS  # and half a period more
    with emulator.serve() as url:
        reports = run_workers(
            url, "redis", redis=redis_url, prefix=os.urandom(4).hex(), calls=calls
        )
    statuses = sum((Counter(r["statuses"]) for r in reports), Counter[str]())
    busiest = emulator.max_calls_in_a_window(token=TOKEN)
    ratio = throughput(emulator)
    arrivals = [r.epoch for r in emulator.calls(token=TOKEN)]
    by_arrival, by_grant, windows = share_of_offer(arrivals, reports, PERIOD, LIMIT)
    rejected = len(emulator.calls(token=TOKEN, status=429))
    report(
        capsys,
        "redis, 4 workers",
        f"{len(emulator.requests)} calls, statuses {dict(statuses)}, busiest window {busiest}/"
        f"{LIMIT}, throughput {ratio:.3f} of the limit, share of the offer {by_arrival:.3f} "
        f"(arrivals) {by_grant:.3f} (grants) over {windows} windows, 429s {rejected}",
    )
    assert WORKERS * calls == len(emulator.requests)
    assert busiest <= LIMIT
    assert 0 == rejected
    assert 0 == sum(1 for r in emulator.requests if r.outcome != "answered")
    # Wall-clock throughput (printed) also measures the runner's CPU; the share of the
    # offer measures the governor: what it let go of what was asked while there was room.
    assert by_arrival >= 0.95


def test_four_workers_in_memory_each_believe_they_own_the_quota(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Why Redis: in-memory governors in four processes together overrun the limit."""
    emulator = Emulator(period=PERIOD, ip_limit=100_000)
    emulator.add_token(TOKEN)
    calls = (MEASURED * LIMIT + LIMIT // 2) // WORKERS  # and half a period more
    with emulator.serve() as url:
        reports = run_workers(url, "memory", calls=calls, timeout=0.5, deadline=3.0)
    statuses = sum((Counter(r["statuses"]) for r in reports), Counter[str]())
    busiest = emulator.max_calls_in_any_window(token=TOKEN)
    rejected = len(emulator.calls(token=TOKEN, status=429))
    banned = sum(1 for r in emulator.requests if r.outcome == "banned")
    report(
        capsys,
        "in memory, 4 workers",
        f"{len(emulator.requests)} calls, statuses {dict(statuses)}, busiest window {busiest}/"
        f"{LIMIT}, 429s {rejected}, calls hanging on a ban {banned}",
    )
    assert emulator.requests
