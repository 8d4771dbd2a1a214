"""The synchronous ``Client`` against ``AsyncClient``, and the governor under 16 threads.

Run: ``.venv/bin/python benchmarks/bench_threads.py`` (about a minute). Two parts:

1. Per-call cost of ``Client`` (a blocking call handed to the client's loop
   thread and back) against ``AsyncClient`` (awaited on the caller's loop),
   one call at a time, typed method, an in-process transport answering the
   unité légale body at once, limits nobody reaches. Wall time per call, in
   interleaved rounds; the ratio is the median of the per-round ratios.
2. The process-wide governor from 16 threads, each running its own asyncio
   loop: (a) uncontended permits per second, 16 threads against 1 (the lock
   and the GIL: total throughput, not per thread); (b) one bucket of 50 calls
   per 0.2 s shared by the 16 threads (each call answered at once): the
   busiest window (never above 50), throughput as a share of the limit over
   the run, and wake-ups per queued call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable

import httpx
from _common import UNITE_LEGALE_V4, payload

from apientreprise_async import AsyncClient, Client, Governor, Limits
from apientreprise_async._catalogue import GROUP_LIMITS, Endpoint
from apientreprise_async.backends import InMemoryBackend

BODY, _SOURCE = payload(UNITE_LEGALE_V4)
SIREN = "418166096"
ENDPOINT = Endpoint(operation_id="bench", path="/bench", provider="bench", version=3)
UNLIMITED = Limits(groups=dict.fromkeys(GROUP_LIMITS, 10**9), ip=10**9, slow_start=False)


def _transport() -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=BODY, headers={"Content-Type": "application/json"}
        )
    )


def _options() -> dict[str, object]:
    return {
        "transport": _transport(),
        "governor": Governor(UNLIMITED, backend=InMemoryBackend()),
        "recipient": "13002526500013",
        "context": "bench",
        "object": "bench",
        "check_maintenance": False,
    }


def per_call(rounds: int, calls: int) -> tuple[float, float, float]:
    """Microseconds per typed call, async then sync (medians), and the median ratio."""
    asynchronous = AsyncClient("x.y.z", **_options())  # type: ignore[arg-type]
    synchronous = Client("x.y.z", **_options())  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()

    async def async_round() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await asynchronous.insee.unites_legales(SIREN)
        return (time.perf_counter() - start) / calls

    def sync_round() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            synchronous.insee.unites_legales(SIREN)
        return (time.perf_counter() - start) / calls

    loop.run_until_complete(async_round())  # warm both up
    sync_round()
    a, s = [], []
    for _ in range(rounds):
        a.append(loop.run_until_complete(async_round()))
        s.append(sync_round())
    loop.run_until_complete(asynchronous.aclose())
    loop.close()
    synchronous.close()
    ratios = [y / x for x, y in zip(a, s, strict=True)]
    return statistics.median(a) * 1e6, statistics.median(s) * 1e6, statistics.median(ratios)


def _in_threads(count: int, target: Callable[[], None]) -> float:
    barrier = threading.Barrier(count + 1)

    def run() -> None:
        barrier.wait()
        target()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def uncontended(threads: int, permits: int) -> float:
    """Permits per second, all threads together, each thread on its own asyncio loop."""
    gov = Governor(UNLIMITED, backend=InMemoryBackend())

    async def work() -> None:
        for _ in range(permits // threads):
            async with gov.permit("tok", ENDPOINT) as permit:
                permit.sending()

    wall = _in_threads(threads, lambda: asyncio.run(work()))
    return permits / wall


def contended(threads: int, calls: int, limit: int, period: float) -> dict[str, float]:
    """One bucket shared by ``threads`` loops: busiest window, throughput, wake-ups."""
    gov = Governor(
        Limits(groups={"json_resources_entreprise": limit}, period=period, slow_start=False),
        backend=InMemoryBackend(),
    )
    sends: list[float] = []

    async def one() -> None:
        async with gov.permit("tok", ENDPOINT) as permit:
            permit.sending()
            sends.append(time.monotonic())
            permit.observe(200, {})

    async def work() -> None:
        await asyncio.gather(*(one() for _ in range(calls // threads)))

    wall = _in_threads(threads, lambda: asyncio.run(work()))
    sends.sort()
    busiest = max(sum(1 for t in sends[i:] if t < start + period) for i, start in enumerate(sends))
    counters = gov.counters
    # Ideal: the limit every hold (period plus margin) from the first send on.
    ideal = limit * (sends[-1] - sends[0]) / gov.limits.hold + limit
    return {
        "calls": len(sends),
        "wall": wall,
        "busiest": busiest,
        "throughput": len(sends) / ideal,
        "wakeups per queued call": counters.wakeups / max(counters.waits, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    print("## Per call, typed method, in process (median of rounds)")
    async_us, sync_us, ratio = per_call(args.rounds, args.calls)
    print(f"  AsyncClient {async_us:8.1f} us   Client {sync_us:8.1f} us   ratio {ratio:.2f}")

    print("## Governor, uncontended permits per second (each thread its own loop)")
    pairs = [(uncontended(1, 32_000), uncontended(16, 32_000)) for _ in range(5)]
    one = statistics.median(p[0] for p in pairs)
    many = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    print(f"  1 thread {one:10.0f}/s   16 threads {many:10.0f}/s   ratio {ratio:.2f}")

    print("## Governor, one bucket (50 per 0.2 s) shared by 16 threads, 800 calls")
    result = contended(16, 800, 50, 0.2)
    print("  " + "   ".join(f"{k} {v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
