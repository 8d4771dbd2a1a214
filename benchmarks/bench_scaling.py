"""How the governor's cost per call grows with buckets and with waiters.

Run alone: ``.venv/bin/python benchmarks/bench_scaling.py`` (about a minute).

- Buckets: 1 to 10,000 tokens, each with its bucket and route already made;
  20,000 full permits (acquire, ``sending()``, release) round-robin over the
  tokens, on asyncio, limits nobody reaches. CPU time per permit.
- Waiters: 10 to 100,000 tasks asking at once for one bucket of 5 per period,
  so that all but five queue; on trio with an auto-jumping mock clock, so the
  periods pass without real waiting and CPU time is the whole cost. CPU time
  per grant, and the same for tasks that only start and checkpoint (the floor
  any scheduler charges), so the governor's own share shows.

The target: flat, or growing no faster than log n.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import time
from typing import Any

import anyio
import anyio.lowlevel

from apientreprise_async._catalogue import Endpoint
from apientreprise_async._governor import Governor, Limits
from apientreprise_async.backends import InMemoryBackend

GROUP = "json_resources_entreprise"
ENDPOINT = Endpoint(operation_id="bench", path="/bench", provider="bench", version=3)
BUCKETS = (1, 10, 100, 1_000, 10_000)
WAITERS = (10, 100, 1_000, 10_000, 100_000)


async def _buckets_once(tokens: int, calls: int) -> float:
    limits = Limits(groups={GROUP: 10**9}, ip=10**9, slow_start=False, margin=0.0)
    governor = Governor(limits, backend=InMemoryBackend())
    names = [f"token-{index:05d}" for index in range(tokens)]

    async def call(token: str) -> None:
        async with governor.permit(token, ENDPOINT) as permit:
            permit.sending()

    for token in names:  # every bucket and route exists before timing
        await call(token)
    gc.disable()
    start = time.process_time()
    for index in range(calls):
        await call(names[index % tokens])
    elapsed = time.process_time() - start
    gc.enable()
    return elapsed / calls * 1e6


def buckets(rounds: int, calls: int = 20_000) -> dict[int, float]:
    """Median CPU microseconds per full permit, per number of token buckets."""
    found: dict[int, list[float]] = {n: [] for n in BUCKETS}
    for _ in range(rounds):
        for tokens in BUCKETS:  # interleaved, so load drifts hit every size alike
            found[tokens].append(asyncio.run(_buckets_once(tokens, calls)))
    return {n: sorted(v)[len(v) // 2] for n, v in found.items()}


async def _waiters_once(waiters: int, governed: bool) -> float:
    limits = Limits(groups={GROUP: 5}, ip=10**9, period=1.0, margin=0.0, slow_start=False)
    governor = Governor(limits, backend=InMemoryBackend())

    async def call() -> None:
        async with governor.permit("token", ENDPOINT) as permit:
            permit.sending()

    async def idle() -> None:
        await anyio.lowlevel.checkpoint()

    task = call if governed else idle
    gc.collect()
    start = time.process_time()
    async with anyio.create_task_group() as group:
        for _ in range(waiters):
            group.start_soon(task)
    elapsed = time.process_time() - start
    if governed:
        assert governor.counters.grants == waiters
    return elapsed / waiters * 1e6


def waiters(rounds: int, largest: int = WAITERS[-1]) -> dict[int, dict[str, float]]:
    """Per number of waiters: CPU microseconds per grant, per bare task, and the difference."""
    from trio.testing import MockClock

    found: dict[int, dict[str, list[float]]] = {}
    for n in (n for n in WAITERS if n <= largest):
        found[n] = {"governed": [], "floor": []}
        for _ in range(rounds):
            for kind in ("governed", "floor"):
                options: dict[str, Any] = {"clock": MockClock(autojump_threshold=0)}
                cost = anyio.run(
                    _waiters_once, n, kind == "governed", backend="trio", backend_options=options
                )
                found[n][kind].append(cost)
    result = {}
    for n, series in found.items():
        governed = sorted(series["governed"])[len(series["governed"]) // 2]
        floor = sorted(series["floor"])[len(series["floor"]) // 2]
        result[n] = {"governed": governed, "floor": floor, "governor": governed - floor}
    return result


def growth(costs: dict[int, float]) -> dict[str, Any]:
    """Largest over smallest size's cost, against log n's growth over the same span."""
    sizes = sorted(costs)
    low, high = sizes[0], sizes[-1]
    ratio = costs[high] / costs[low]
    log_bound = math.log(max(high, 2)) / math.log(max(low, 2))
    verdict = "flat" if ratio <= 1.5 else "within log n" if ratio <= log_bound else "beyond log n"
    return {"ratio": ratio, "log n bound": log_bound, "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("## Governor cost per permit vs token buckets (CPU us)")
    by_bucket = buckets(args.rounds)
    for n, cost in by_bucket.items():
        print(f"  {n:7,d} buckets  {cost:6.2f} us  {cost / by_bucket[BUCKETS[0]]:5.2f} x")
    print(f"  growth: {growth(by_bucket)}")
    print("## Governor cost per grant vs concurrent waiters (trio, mock clock, CPU us)")
    by_waiters = waiters(args.rounds)
    for n, row in by_waiters.items():
        print(
            f"  {n:7,d} waiters  {row['governed']:6.2f} us per call, floor {row['floor']:5.2f},"
            f" governor {row['governor']:6.2f} us"
        )
    print(f"  growth: {growth({n: r['governed'] for n, r in by_waiters.items()})}")


if __name__ == "__main__":
    main()
