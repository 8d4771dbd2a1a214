"""Chaos for the Redis governor: worker processes, one token, Redis failing at random moments.

Used by ``tests/test_redis_chaos.py`` (a short run) and
``benchmarks/bench_redis_chaos.py`` (longer runs, figures for the README).
Each worker is ``python -m tests._redis_worker`` with its own
:class:`~apientreprise_async.redis.RedisBackend`; the emulator serves them all
on loopback and records every arrival. Meanwhile this process kills Redis (and
starts it again, empty, a moment later), restarts it empty, flushes it, or
replaces it with an older copy of its data (a failover to a replica that lagged).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import redis

from apientreprise_async.testing import Emulator

from ._redis_server import RedisProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = ("killed", "restarted empty", "flushed", "failed over to a lagging copy")


class _Snapshots(threading.Thread):
    """Copies of Redis' data every ``every`` seconds: what a lagging replica would hold."""

    def __init__(self, server: RedisProcess, every: float) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.every = every
        self.latest: dict[bytes, tuple[bytes, int]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                with redis.Redis(port=self.server.port, socket_timeout=0.5) as client:
                    keys = client.keys("*")
                    copy = {}
                    for key in keys:
                        value = client.dump(key)
                        if value is not None:
                            copy[key] = (value, client.pttl(key))
                    self.latest = copy
            except redis.RedisError:
                pass


def _inject(kind: str, server: RedisProcess, snapshots: _Snapshots, rng: random.Random) -> None:
    if kind == "killed":
        server.stop()
        time.sleep(rng.uniform(0.1, 0.6))
        server.start()
    elif kind == "restarted empty":
        server.restart()
    elif kind == "flushed":
        with redis.Redis(port=server.port) as client:
            client.flushall()
    else:
        older = snapshots.latest
        server.restart()
        with redis.Redis(port=server.port) as client:
            for key, (value, ttl) in older.items():
                client.restore(key, max(ttl, 0), value, replace=True)


def run_chaos(
    token: str,
    *,
    workers: int = 3,
    period: float = 0.5,
    ip_limit: int = 20,
    periods: int = 8,
    faults: int = 4,
    fail_mode: str = "local",
    seed: int = 1,
) -> dict[str, Any]:
    """Run the workers for about ``periods`` periods with ``faults`` faults; the figures."""
    rng = random.Random(seed)
    emulator = Emulator(period=period, ip_limit=ip_limit)
    emulator.add_token(token)
    calls = ip_limit * periods // workers
    server = RedisProcess().start()
    snapshots = _Snapshots(server, period / 2)
    processes: list[subprocess.Popen[str]] = []
    injected: Counter[str] = Counter()
    try:
        snapshots.start()
        with emulator.serve() as url:
            for index in range(workers):
                argv = [sys.executable, "-m", "tests._redis_worker", "--url", url]
                argv += ["--token", token, "--backend", "redis", "--redis", server.url]
                argv += ["--prefix", f"chaos{seed}", "--index", str(index)]
                argv += ["--workers", str(workers), "--calls", str(calls), "--tasks", "10"]
                argv += ["--period", str(period), "--ip", str(ip_limit)]
                argv += ["--fail-mode", fail_mode, "--recheck", str(period / 2)]
                argv += ["--timeout", "1.0", "--deadline", str(periods * period * 6 + 10)]
                # Failing closed, a refused call is tried again a quarter period later (as
                # an application would), for up to ten periods: the run then spans the faults.
                argv += ["--retry-refused", "40"]
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
            for process in processes:
                assert process.stdout is not None
                assert "ready" == process.stdout.readline().strip()
            started = time.monotonic()
            for process in processes:
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            moments = sorted(rng.uniform(0.5, periods) * period for _ in range(faults))
            for moment in moments:
                time.sleep(max(0.0, started + moment - time.monotonic()))
                kind = rng.choice(FAULTS)
                _inject(kind, server, snapshots, rng)
                injected[kind] += 1
            reports = []
            for process in processes:
                out, _ = process.communicate(timeout=periods * period * 6 + 30)
                reports.append(json.loads(out.strip().splitlines()[-1]))
                reports[-1]["returncode"] = process.returncode
            elapsed = time.monotonic() - started
    finally:
        snapshots.stopping.set()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.stop()
    statuses = sum((Counter(r["statuses"]) for r in reports), Counter[str]())
    arrivals = sorted(r.monotonic for r in emulator.calls(token=token))
    span = arrivals[-1] - arrivals[0] if arrivals else 0.0
    return {
        "workers": workers,
        "fail_mode": fail_mode,
        "calls": calls * workers,
        "ended": sum(statuses.values()),
        "statuses": dict(statuses),
        "returncodes": [r["returncode"] for r in reports],
        "busiest": emulator.max_calls_in_any_window(token=token),
        "limit": ip_limit,
        "windows_checked": len(arrivals),
        "faults": dict(injected),
        "losses_seen": sum(r["losses"] for r in reports),
        "rejected_429": len(emulator.calls(token=token, status=429)),
        "banned": sum(1 for r in emulator.requests if r.outcome == "banned"),
        "elapsed": elapsed,
        # Arrivals per period over the span they took, against the limit per period.
        "throughput": len(arrivals) / ((span + period) / period * ip_limit) if arrivals else 0.0,
    }
