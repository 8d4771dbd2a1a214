"""Acquire cost of the host-local backend, against in memory and Redis, in one run.

Usage::

    .venv/bin/python benchmarks/bench_host.py              # starts its own redis-server if any
    .venv/bin/python benchmarks/bench_host.py --no-redis

Per uncontended call (bucket plus IP, far under the limits): the backend's
``acquire`` alone, ``acquire`` plus ``release``, and a full governor permit
(acquire, ``sending()``, release). Then the same permit while ``--contenders``
other processes hammer the same SQLite store. Median of several rounds, in
microseconds, wall time on one asyncio loop.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import anyio

from apientreprise_async.backends import GovernorBackend, InMemoryBackend
from apientreprise_async.host import HostBackend

from .bench_redis import measure, start_redis


def _contend(directory: str, stop: float) -> None:
    """Another process taking and releasing slots in the same store until ``stop``."""

    async def main() -> None:
        from apientreprise_async.backends import SlotRequest

        backend = HostBackend(directory)
        requests = [SlotRequest("other/json_resources_entreprise", 10**9), SlotRequest("ip", 10**9)]
        while time.monotonic() < stop:
            grant = await backend.acquire(requests)
            await backend.release(grant, end=None)  # type: ignore[arg-type]

    anyio.run(main, backend="asyncio")


async def run(url: str | None, calls: int, rounds: int, contenders: int) -> None:
    """Measure every backend, print a Markdown table."""
    directory = Path(tempfile.mkdtemp(prefix="bench-host-"))
    columns: dict[str, dict[str, float]] = {}
    columns["in memory"] = await measure(InMemoryBackend(), calls, rounds)
    columns["host (SQLite)"] = await measure(HostBackend(directory), calls, rounds)
    if contenders:
        stop = time.monotonic() + 2 + calls * rounds * 3e-4
        others = [
            multiprocessing.Process(target=_contend, args=(str(directory), stop))
            for _ in range(contenders)
        ]
        for process in others:
            process.start()
        await anyio.sleep(1.0)  # let them import and start hammering
        columns[f"host, {contenders} busy others"] = await measure(
            HostBackend(directory), calls, rounds
        )
        for process in others:
            process.join()
    if url is not None:
        from apientreprise_async.redis import RedisBackend

        backend: GovernorBackend
        async with RedisBackend(url, prefix="benchhost") as backend:
            columns["Redis"] = await measure(backend, calls, rounds)
    names = list(columns)
    print("| per call | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for row in columns["in memory"]:
        cells = " | ".join(f"{columns[name][row]:.1f} us" for name in names)
        print(f"| {row} | {cells} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis (default: start one)")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--contenders", type=int, default=2)
    args = parser.parse_args()
    server = None
    if not args.no_redis and args.url is None:
        try:
            server, args.url = start_redis()
        except SystemExit:
            args.url = None
    try:
        anyio.run(
            run,
            None if args.no_redis else args.url,
            args.calls,
            args.rounds,
            args.contenders,
            backend="asyncio",
        )
    finally:
        if server is not None:
            server.kill()
            server.wait()
