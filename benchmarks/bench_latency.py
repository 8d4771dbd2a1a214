"""Efficiency against a strict server when calls take time: the governor next to its peers.

Run: ``python benchmarks/bench_latency.py`` (needs the ``benchmark`` extra;
about five minutes with the defaults). Everything runs on asyncio in real
time, since aiolimiter, pyrate-limiter and limits read the real clocks.

The server counts calls in fixed windows of ``period`` seconds (``--limit``
per window), clock-aligned or opened by a first call, and answers with
``RateLimit-Limit/Remaining/Reset`` (an epoch on its clock), ``Retry-After``
and a 429 past the limit. Each call takes a random time uniform in
``[0, x * period]``, either *after* the server counted it (the provider's
time, then the way back: the answer comes late) or *before* (network delay:
the call lands late). 400 workers call as fast as their limiter lets them.

Contenders, each configured with the server's limit and period:

- this governor (``Governor(Limits(period=...))``, reading the headers);
- the same governor shown no header (each call then holds its slot one period
  after its answer: the rule for silent answers, and 0.1's rule for all);
- aiolimiter (``AsyncLimiter(limit, period)``), pyrate-limiter
  (``Limiter(Rate(limit, period))``, blocking acquire) and limits
  (``MovingWindowRateLimiter``, waiting for the window stats' reset): on a 429
  a worker sleeps ``Retry-After`` and goes on.

Efficiency: calls answered 200 in the measured windows (after one window of
warm-up) over ``windows x limit``. Also counted: 429s, and calls arriving in a
window after its first 429 (the emulator bans for those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pathlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiolimiter import AsyncLimiter
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pyrate_limiter import Limiter, Rate

from apientreprise_async._catalogue import Endpoint
from apientreprise_async._governor import Governor, Limits
from apientreprise_async.backends import InMemoryBackend

HERE = pathlib.Path(__file__).resolve().parent
ENDPOINT = Endpoint(operation_id="bench", path="/bench", provider="bench", version=3)
EPOCH = 1_700_000_000.0
WORKERS = 400
CONTENDERS = ("governor", "governor, headers ignored", "aiolimiter", "pyrate-limiter", "limits")


class StrictServer:
    """Counts arrivals in fixed windows; 429 past the limit."""

    def __init__(self, limit: int, period: float, *, aligned: bool) -> None:
        self.limit = limit
        self.period = period
        self.aligned = aligned
        self.start = -math.inf
        self.end = -math.inf
        self.count = 0
        self.refused_in_window = False
        self.ok: list[float] = []
        self.rejected = 0
        self.after_429 = 0

    def arrive(self, now: float) -> tuple[int, dict[str, str]]:
        if now >= self.end:
            self.start = math.floor(now / self.period) * self.period if self.aligned else now
            self.end = self.start + self.period
            self.count = 0
            self.refused_in_window = False
        if self.refused_in_window:
            self.after_429 += 1
        self.count += 1
        headers = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(max(0, self.limit - self.count)),
            "ratelimit-reset": f"{EPOCH + self.end:.6f}",
        }
        if self.count > self.limit:
            self.rejected += 1
            self.refused_in_window = True
            headers["retry-after"] = f"{self.end - now:.6f}"
            return 429, headers
        self.ok.append(now)
        return 200, headers


def _limiter(kind: str, limit: int, period: float) -> Callable[[], Awaitable[None]]:
    """An ``acquire()`` coroutine function for a peer limiter."""
    if kind == "aiolimiter":
        aio = AsyncLimiter(limit, period)
        return aio.acquire
    if kind == "pyrate-limiter":
        pyrate = Limiter(Rate(limit, int(period * 1000)))

        async def pyrate_acquire() -> None:
            await pyrate.try_acquire_async("tok")

        return pyrate_acquire
    moving = MovingWindowRateLimiter(MemoryStorage())
    item = parse(f"{limit}/{period:g} second")

    async def limits_acquire() -> None:
        while not await moving.hit(item, "tok"):
            stats = await moving.get_window_stats(item, "tok")
            await asyncio.sleep(max(stats.reset_time - time.time(), 0.001))

    return limits_acquire


async def run(
    kind: str,
    *,
    aligned: bool,
    where: str,
    fraction: float,
    limit: int,
    period: float,
    windows: int,
    seed: int = 7,
) -> dict[str, Any]:
    """One contender, one setting: efficiency, 429s and calls after a 429."""
    loop = asyncio.get_running_loop()
    server = StrictServer(limit, period, aligned=aligned)
    rng = random.Random(seed)
    spread = fraction * period
    start = loop.time()
    if aligned:  # measure whole clock windows
        start = (math.floor(start / period) + 1) * period
        await asyncio.sleep(start - loop.time())
    measured_from = start + period  # one window of warm-up
    stop = measured_from + windows * period

    def wall() -> float:
        return EPOCH + loop.time()

    gov = Governor(Limits(period=period), backend=InMemoryBackend(), wall_clock=wall)
    acquire = None if kind.startswith("governor") else _limiter(kind, limit, period)
    blind = kind == "governor, headers ignored"

    async def exchange() -> tuple[int, dict[str, str]]:
        delay = rng.uniform(0, spread)
        if where == "network":
            await asyncio.sleep(delay)
        answer = server.arrive(loop.time())
        if where == "provider":
            await asyncio.sleep(delay)
        return answer

    async def worker() -> None:
        while loop.time() < stop:
            if acquire is None:
                async with gov.permit("tok", ENDPOINT) as permit:
                    if loop.time() >= stop:
                        return
                    permit.sending()
                    status, headers = await exchange()
                    if blind:  # what a 429 says still counts; the window does not
                        headers = {"retry-after": headers["retry-after"]} if status == 429 else {}
                    permit.observe(status, headers)
            else:
                await acquire()
                if loop.time() >= stop:
                    return
                status, headers = await exchange()
                if status == 429:
                    await asyncio.sleep(float(headers["retry-after"]))

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    ok = sum(1 for t in server.ok if measured_from <= t < stop)
    return {
        "contender": kind,
        "windows": "aligned" if aligned else "first-call",
        "where": where,
        "fraction": fraction,
        "efficiency": ok / (windows * limit),
        "429": server.rejected,
        "after_429": server.after_429,
    }


def chart(results: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Efficiency (top) and 429s (bottom) against the delay, per alignment and delay kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), sharex=True, sharey="row")
    panels = [(w, p) for w in ("aligned", "first-call") for p in ("provider", "network")]
    for column, (windows, where) in enumerate(panels):
        top, bottom = axes[0][column], axes[1][column]
        for kind in CONTENDERS:
            rows = [
                r
                for r in results
                if r["contender"] == kind
                and r["windows"] == windows
                and (r["where"] == where or r["fraction"] == 0.0)
            ]
            rows.sort(key=lambda r: r["fraction"])
            xs = [100 * r["fraction"] for r in rows]
            top.plot(xs, [r["efficiency"] for r in rows], marker="o", label=kind)
            bottom.plot(xs, [r["429"] for r in rows], marker="o", label=kind)
        top.set_title(f"{windows} windows, {where} time")
        bottom.set_xlabel("delay, % of the window (uniform 0..x)")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    axes[0][0].set_ylabel("efficiency (200s / limit per window)")
    axes[0][0].set_ylim(0.85, 1.02)
    axes[1][0].set_ylabel("429s in the run")
    axes[1][0].set_yscale("symlog", linthresh=1)
    axes[1][0].set_ylim(0, 500)
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.suptitle("Strict fixed-window server, 1 s windows, 250 per window, 400 workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=6, help="measured windows per run")
    parser.add_argument("--limit", type=int, default=250)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--fractions", default="0,0.1,0.2", help="provider time, share of a window")
    parser.add_argument("--network", default="0.2", help="network delay, share of a window")
    parser.add_argument("--json", type=pathlib.Path, default=HERE / "latency.json")
    parser.add_argument("--png", type=pathlib.Path, default=HERE / "latency.png")
    parser.add_argument("--chart-only", action="store_true", help="redraw from --json")
    args = parser.parse_args()
    if args.chart_only:
        chart(json.loads(args.json.read_text()), args.png)
        return
    fractions = [float(f) for f in args.fractions.split(",")]
    networks = [float(f) for f in args.network.split(",")]
    settings = [("provider", f) for f in fractions] + [("network", f) for f in networks if f > 0]
    results = []
    print("| windows | delay | contender | efficiency | 429s | calls after a 429 |")
    print("|---|---|---|---|---|---|")
    for aligned in (True, False):
        for where, fraction in settings:
            for kind in CONTENDERS:
                result = await run(
                    kind,
                    aligned=aligned,
                    where=where,
                    fraction=fraction,
                    limit=args.limit,
                    period=args.period,
                    windows=args.windows,
                )
                results.append(result)
                label = "none" if fraction == 0 else f"{where} 0-{fraction:.0%}"
                print(
                    f"| {result['windows']} | {label} | {kind} | {result['efficiency']:.3f} "
                    f"| {result['429']} | {result['after_429']} |",
                    flush=True,
                )
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    chart(results, args.png)


if __name__ == "__main__":
    asyncio.run(main())
