"""The governor side by side with aiolimiter, pyrate-limiter and limits.

Run: ``.venv/bin/python benchmarks/bench_governor.py`` (needs the ``benchmark``
extra; about two minutes). Everything runs on asyncio in real time, since
aiolimiter only knows asyncio. Three measures:

1. uncontended acquire: cost per call while under a 250/min limit;
2. drain of 10,000 concurrent waiters: wake-ups per grant and wall time;
3. throughput against a fixed-window server (``period=1.0``, limit 250,
   12 periods): calls answered 200 per period over the limit, and 429s, with
   network latency up to 0 %, 0.5 % and 20 % of the period each way (the last
   one sending each request from a new task).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiolimiter import AsyncLimiter
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pyrate_limiter import Duration, Limiter, Rate

from apientreprise_async._catalogue import Endpoint
from apientreprise_async._governor import Governor, Limits
from apientreprise_async.backends import InMemoryBackend

GROUP = "json_resources_entreprise"
ENDPOINT = Endpoint(operation_id="bench", path="/bench", provider="bench", version=3)
EPOCH = 1_700_000_000.0


def loop_wall_clock() -> float:
    """The benchmark world's wall clock: the loop's clock shifted to an epoch."""
    return EPOCH + asyncio.get_running_loop().time()


# 1. Uncontended acquire ---------------------------------------------------------


async def _per_call(make: Callable[[], Callable[[], Awaitable[None]]], rounds: int) -> float:
    """Microseconds per call: ``rounds`` fresh limiters, 200 calls each (under 250/min)."""
    total = 0.0
    for _ in range(rounds):
        acquire = make()
        gc.disable()
        start = time.perf_counter()
        for _ in range(200):
            await acquire()
        total += time.perf_counter() - start
        gc.enable()
    return total / (rounds * 200) * 1e6


def _governor_call() -> Callable[[], Awaitable[None]]:
    gov = Governor(Limits(slow_start=False), backend=InMemoryBackend())

    async def call() -> None:
        async with gov.permit("tok", ENDPOINT) as permit:
            permit.sending()

    return call


def _governor_acquire_only() -> Callable[[], Awaitable[None]]:
    gov = Governor(Limits(slow_start=False), backend=InMemoryBackend())

    async def call() -> None:
        await gov.permit("tok", ENDPOINT).__aenter__()  # never released: acquire alone

    return call


def _aiolimiter_call() -> Callable[[], Awaitable[None]]:
    limiter = AsyncLimiter(250, 60)

    async def call() -> None:
        async with limiter:
            pass

    return call


def _pyrate_call() -> Callable[[], Awaitable[None]]:
    limiter = Limiter(Rate(250, Duration.MINUTE))

    async def call() -> None:
        await limiter.try_acquire_async("tok")

    return call


def _limits_call() -> Callable[[], Awaitable[None]]:
    limiter = MovingWindowRateLimiter(MemoryStorage())
    item = parse("250/minute")

    async def call() -> None:
        await limiter.hit(item, "tok")

    return call


async def uncontended(rounds: int) -> dict[str, float]:
    """Cost per call of each limiter, microseconds."""
    contenders = {
        "governor (bucket + IP, full permit)": _governor_call,
        "governor (acquire alone)": _governor_acquire_only,
        "aiolimiter": _aiolimiter_call,
        "pyrate-limiter": _pyrate_call,
        "limits (moving window)": _limits_call,
    }
    results: dict[str, float] = {}
    for name, make in contenders.items():
        await _per_call(make, 5)  # warm up
        results[name] = min([await _per_call(make, rounds) for _ in range(3)])
    return results


# 2. Drain of 10,000 waiters -----------------------------------------------------


async def drain_governor(waiters: int) -> tuple[float, float]:
    """Wall time and wake-ups per queued grant, 1,000 per 0.1 s."""
    limits = Limits(groups={GROUP: 1000}, ip=10**9, period=0.1, margin=0.0, slow_start=False)
    gov = Governor(limits, backend=InMemoryBackend())

    async def one() -> None:
        async with gov.permit("tok", ENDPOINT) as permit:
            permit.sending()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(waiters)))
    wall = time.perf_counter() - start
    counters = gov.counters
    return wall, counters.wakeups / max(counters.waits, 1)


class _CountingLimiter(AsyncLimiter):
    """aiolimiter, counting how often a waiter re-checks capacity after waking."""

    checks = 0

    def has_capacity(self, amount: float = 1) -> bool:
        self.checks += 1
        return super().has_capacity(amount)


async def drain_aiolimiter(waiters: int) -> tuple[float, float]:
    """Wall time and wake-ups per queued grant, same rate."""
    limiter = _CountingLimiter(1000, 0.1)

    async def one() -> None:
        async with limiter:
            pass

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(waiters)))
    wall = time.perf_counter() - start
    queued = waiters - 1000
    return wall, (limiter.checks - waiters) / queued


# 3. Throughput against a fixed-window server --------------------------------------


class FixedWindowServer:
    """Counts arrivals in clock-aligned windows, answers RateLimit-* and 429 past the limit."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.counts: dict[int, int] = {}
        self.ok_per_window: dict[int, int] = {}
        self.rejected = 0
        self.first_rejection: float | None = None

    def arrive(self, now: float) -> tuple[int, dict[str, str]]:
        index = math.floor(now / self.period)
        count = self.counts[index] = self.counts.get(index, 0) + 1
        end = (index + 1) * self.period
        headers = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(max(0, self.limit - count)),
            "ratelimit-reset": f"{EPOCH + end:.4f}",
        }
        if count > self.limit:
            self.rejected += 1
            if self.first_rejection is None:
                self.first_rejection = now
            headers["retry-after"] = f"{end - now:.4f}"
            return 429, headers
        self.ok_per_window[index] = self.ok_per_window.get(index, 0) + 1
        return 200, headers


async def throughput(
    kind: str, latency: float, *, new_task: bool, periods: int, limit: int = 250
) -> dict[str, Any]:
    """Run as many calls as allowed for ``periods`` windows; efficiency and 429s."""
    loop = asyncio.get_running_loop()
    period = 1.0
    server = FixedWindowServer(limit, period)
    rng = random.Random(7)
    # Start on a window boundary, so that ``periods`` whole windows are measured.
    first = math.floor(loop.time() / period) + 1
    await asyncio.sleep(first * period - loop.time())
    stop = (first + periods) * period
    if kind == "governor":
        gov = Governor(
            Limits(groups={GROUP: limit}, period=period),
            backend=InMemoryBackend(),
            wall_clock=loop_wall_clock,
        )
    else:
        limiter = AsyncLimiter(limit, period)  # as aiolimiter's README suggests: rate, period

    async def exchange(permit: Any) -> None:
        if permit is not None:
            permit.sending()
        await asyncio.sleep(rng.uniform(0, latency))
        status, headers = server.arrive(loop.time())
        await asyncio.sleep(rng.uniform(0, latency))
        if permit is not None:
            permit.observe(status, headers)

    async def send(permit: Any) -> None:
        if new_task:
            await asyncio.create_task(exchange(permit))
        else:
            await exchange(permit)

    async def worker() -> None:
        while loop.time() < stop:
            if kind == "governor":
                async with gov.permit("tok", ENDPOINT) as permit:
                    if loop.time() >= stop:
                        return
                    await send(permit)
            else:
                async with limiter:
                    if loop.time() >= stop:
                        return
                    await send(None)

    await asyncio.gather(*(worker() for _ in range(400)))
    measured = range(first, first + periods)
    ok = sum(server.ok_per_window.get(i, 0) for i in measured)
    return {
        "efficiency": ok / (periods * limit),
        "429": server.rejected,
        "calls": sum(server.counts.values()),
        "first 429 after": None
        if server.first_rejection is None
        else server.first_rejection - first * period,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    print("## Uncontended acquire, 250/min, microseconds per call (lower is better)")
    costs = await uncontended(args.rounds)
    base = costs["aiolimiter"]
    for name, cost in costs.items():
        print(f"  {name:40s} {cost:7.2f} us   {cost / base:5.2f} x aiolimiter")

    print("## Drain of 10,000 concurrent waiters (1,000 per 0.1 s)")
    for name, drain in (("governor", drain_governor), ("aiolimiter", drain_aiolimiter)):
        wall, wakes = await drain(10_000)
        print(f"  {name:12s} wall {wall:6.3f} s   wake-ups per queued grant {wakes:6.3f}")

    print(f"## Fixed-window server, period 1.0 s, limit 250, {args.periods} periods")
    cases = (("none", 0.0, False), ("0.5 %", 0.005, False), ("20 %, new task", 0.2, True))
    for label, latency, new_task in cases:
        for kind in ("governor", "aiolimiter"):
            result = await throughput(kind, latency, new_task=new_task, periods=args.periods)
            first = result["first 429 after"]
            print(
                f"  latency {label:15s} {kind:10s} efficiency {result['efficiency']:.4f}  "
                f"429s {result['429']:5d} / {result['calls']:5d} calls"
                + ("" if first is None else f"  (first after {first:.3f} s)")
            )


if __name__ == "__main__":
    asyncio.run(main())
