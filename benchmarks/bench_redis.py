"""Acquire round trip: RedisBackend against InMemoryBackend, side by side in one run.

Usage::

    .venv/bin/python benchmarks/bench_redis.py            # starts its own redis-server
    .venv/bin/python benchmarks/bench_redis.py --url redis://host:6379/0

Measures, per uncontended call (bucket plus IP, under the limits): the
backend's ``acquire`` alone, ``acquire`` plus ``release``, a full governor
permit (acquire, ``sending()``, release), and a bare Redis ``PING`` as the
floor of any round trip. Median of several rounds, in microseconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as aioredis

from apientreprise_async._catalogue import get_endpoint
from apientreprise_async._governor import Governor, Limits
from apientreprise_async.backends import GovernorBackend, InMemoryBackend, SlotRequest
from apientreprise_async.redis import RedisBackend

ENDPOINT = get_endpoint("api_entreprise_v4_insee_unites_legales")
# Limits no run reaches: admission never waits, only the round trip is measured.
LIMITS = Limits(groups={ENDPOINT.rate_group: 10**9}, ip=10**9, slow_start=False)
REQUESTS = [SlotRequest("fp/json_resources_entreprise", 10**9), SlotRequest("ip", 10**9)]


async def per_call(action: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the wall time per call, in microseconds."""
    for _ in range(calls // 10):
        await action()  # warm up: connections, scripts loaded, caches
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await action()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


async def measure(backend: GovernorBackend, calls: int, rounds: int) -> dict[str, float]:
    """The three measures for one backend."""
    gov = Governor(LIMITS, backend=backend)
    grants = []

    async def acquire() -> None:
        grants.append(await backend.acquire(REQUESTS))

    async def acquire_release() -> None:
        grant = await backend.acquire(REQUESTS)
        await backend.release(grant, end=None)  # type: ignore[arg-type]

    async def permit() -> None:
        async with gov.permit("fp", ENDPOINT) as p:
            p.sending()

    results = {"acquire": await per_call(acquire, calls, rounds)}
    for grant in grants:
        await backend.release(grant, end=None)  # type: ignore[arg-type]
    results["acquire + release"] = await per_call(acquire_release, calls, rounds)
    results["full permit"] = await per_call(permit, calls, rounds)
    return results


async def main(url: str, calls: int, rounds: int) -> None:
    """Run both backends and a bare PING, print a Markdown table."""
    memory = await measure(InMemoryBackend(), calls, rounds)
    async with RedisBackend(url, prefix=f"bench{os.getpid()}") as backend:
        shared = await measure(backend, calls, rounds)
    client = aioredis.Redis.from_url(url)
    try:
        ping = await per_call(client.ping, calls, rounds)
    finally:
        await client.aclose()
    print(f"bare Redis PING round trip: {ping:.0f} us\n")
    print("| per call          | in memory | Redis   | Redis / PING |")
    print("|-------------------|-----------|---------|--------------|")
    for name, value in shared.items():
        print(
            f"| {name:<17} | {memory[name]:>6.1f} us | {value:>4.0f} us | {value / ping:>10.2f} x |"
        )


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server without persistence on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server on PATH: pass --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    return process, f"redis://127.0.0.1:{port}/0"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis (default: start one)")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = None
    if args.url is None:
        server, args.url = start_redis()
    try:
        anyio.run(main, args.url, args.calls, args.rounds, backend="asyncio")
    finally:
        if server is not None:
            server.kill()
            server.wait()
