"""Acquire cost of the host-local backend, against in memory and Redis, in one run.

Usage::

    .venv/bin/python benchmarks/bench_host.py              # starts its own redis-server if any
    .venv/bin/python benchmarks/bench_host.py --no-redis

Per uncontended call (bucket plus IP, far under the limits): the backend's
``acquire`` then ``release`` (unsent), and a full governor permit (acquire,
``sending()``, release). Columns: ``InMemoryBackend`` (the default before
issue 21), the default backend of a process alone on its host (what a single
process runs now), ``HostBackend`` alone, ``HostBackend`` while
``--contenders`` other processes hammer the same store, and Redis on loopback.

The first two are measured in interleaved rounds and compared round by round
(CPU time: all their work is in this process, and the machine is shared); the
others are medians of rounds in wall time. Microseconds per call.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from apientreprise_async._catalogue import get_endpoint
from apientreprise_async._governor import Governor, Limits
from apientreprise_async._sharing import new_default_backend
from apientreprise_async.backends import GovernorBackend, InMemoryBackend, SlotRequest
from apientreprise_async.host import HostBackend

ENDPOINT = get_endpoint("api_entreprise_v4_insee_unites_legales")
# Limits no run reaches: admission never waits, only the cost is measured.
LIMITS = Limits(groups={ENDPOINT.rate_group: 10**9}, ip=10**9, slow_start=False)
REQUESTS = [SlotRequest("fp/json_resources_entreprise", 10**9), SlotRequest("ip", 10**9)]
Action = Callable[[], Awaitable[object]]


def actions(backend: GovernorBackend) -> dict[str, Action]:
    """The two measures for one backend."""
    governor = Governor(LIMITS, backend=backend)

    async def acquire_release() -> None:
        grant = await backend.acquire(REQUESTS)
        await backend.release(grant, end=None)  # type: ignore[arg-type]

    async def permit() -> None:
        async with governor.permit("fp", ENDPOINT) as entered:
            entered.sending()

    return {"acquire + release": acquire_release, "full permit": permit}


async def one_round(action: Action, calls: int, clock: Callable[[], float]) -> float:
    """Microseconds per call over ``calls`` calls."""
    start = clock()
    for _ in range(calls):
        await action()
    return (clock() - start) / calls * 1e6


async def median(action: Action, calls: int, rounds: int) -> float:
    """Median wall time per call over ``rounds`` rounds (after a warm-up)."""
    await one_round(action, calls // 10, time.perf_counter)
    samples = [await one_round(action, calls, time.perf_counter) for _ in range(rounds)]
    return statistics.median(samples)


async def column(backend: GovernorBackend, calls: int, rounds: int) -> dict[str, float]:
    """Both measures for ``backend``, in wall time."""
    return {name: await median(action, calls, rounds) for name, action in actions(backend).items()}


def _contend(directory: str, stop: float) -> None:
    """Another process taking and releasing slots in the same store until ``stop``."""

    async def main() -> None:
        backend = HostBackend(directory)
        requests = [SlotRequest("other/json_resources_entreprise", 10**9), SlotRequest("ip", 10**9)]
        while time.monotonic() < stop:
            grant = await backend.acquire(requests)
            await backend.release(grant, end=None)  # type: ignore[arg-type]

    anyio.run(main, backend="asyncio")


async def run(url: str | None, calls: int, rounds: int, contenders: int) -> None:
    """Measure every backend, print Markdown tables."""
    directory = Path(tempfile.mkdtemp(prefix="bench-host-"))
    os.environ["APIENTREPRISE_ASYNC_RUNTIME_DIR"] = str(directory / "default")
    alone = new_default_backend()
    before, after = actions(InMemoryBackend()), actions(alone)
    print("| per call (CPU) | in memory (before) | default, alone (now) | now / before |")
    print("|---|---|---|---|")
    for name in before:
        pairs = []
        for _ in range(rounds):
            await one_round(before[name], calls // 10, time.process_time)
            old = await one_round(before[name], calls * 10, time.process_time)
            await one_round(after[name], calls // 10, time.process_time)
            new = await one_round(after[name], calls * 10, time.process_time)
            pairs.append((old, new))
        ratios = sorted(new / old for old, new in pairs)
        print(
            f"| {name} | {statistics.median(p[0] for p in pairs):.2f} us "
            f"| {statistics.median(p[1] for p in pairs):.2f} us "
            f"| {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) |"
        )
    assert not alone.shared
    alone.clear()

    columns: dict[str, dict[str, float]] = {}
    columns["in memory"] = {
        n: await median(a, calls, rounds) for n, a in actions(InMemoryBackend()).items()
    }
    store = directory / "store"
    columns["host (SQLite)"] = {
        n: await median(a, calls, rounds) for n, a in actions(HostBackend(store)).items()
    }
    if contenders:
        stop = time.monotonic() + 3 + calls * rounds * 2 * 1e-3
        others = [
            multiprocessing.Process(target=_contend, args=(str(store), stop))
            for _ in range(contenders)
        ]
        for process in others:
            process.start()
        await anyio.sleep(1.5)  # let them import and start hammering
        columns[f"host, {contenders} busy others"] = await column(HostBackend(store), calls, rounds)
        for process in others:
            process.join()
    if url is not None:
        from apientreprise_async.redis import RedisBackend

        async with RedisBackend(url, prefix="benchhost") as redis:
            columns["Redis"] = {
                n: await median(a, calls, rounds) for n, a in actions(redis).items()
            }
    names = list(columns)
    print()
    print("| per call (wall) | " + " | ".join(names) + " |")
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
        from .bench_redis import start_redis

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
