"""End-to-end throughput and 429s against the emulator served on loopback.

Run alone: ``.venv/bin/python benchmarks/bench_e2e.py`` (about a minute, more
the first time: it builds ``benchmarks/.venv-api-entreprise``).

Each contender gets a fresh ``Emulator(period=1.0)`` (a minute runs in a
second: 250 calls per period for the token's bucket, 1,000 for the IP, a ban
for whoever calls again before a 429's ``Retry-After``) served by uvicorn on
127.0.0.1 from a process of its own (``_serve_emulator.py``), and as many
distinct SIRETs as it can take. It starts on a window
boundary and stops after ``--periods`` windows. Efficiency is the answers 200
inside those windows over ``periods x 250``.

- this client: ``client.batch("api_entreprise_v4_insee_etablissements", sirets)``
  with ``Limits(period=1.0)`` and 25 workers;
- httpx + aiolimiter: 25 workers sharing ``AsyncLimiter(250, 1.0)`` (rate,
  period, as aiolimiter's README configures it); on a 429 a worker sleeps
  ``Retry-After`` and tries again;
- the ``api-entreprise`` package from PyPI: 25 threads calling
  ``donnees_etablissement(siret)`` with its pyrate-limiter
  (``Limiter(RequestRate(250, 1.0))``), in a separate environment (it needs
  pyrate-limiter 2.x); see ``_drive_api_entreprise.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
from _common import ETABLISSEMENT_V4, luhn_sirets
from aiolimiter import AsyncLimiter

from apientreprise_async import AsyncClient, Governor, Limits
from apientreprise_async.backends import InMemoryBackend

HERE = pathlib.Path(__file__).resolve().parent
SYNC_ENV = HERE / ".venv-api-entreprise"
SYNC_PACKAGE = "api-entreprise[ratelimit]~=31.0"
TOKEN = "benchmark-token"
LIMIT = 250
# Workers of the hand-written loop and threads of the sync package: plenty for
# 250 calls per second at loopback latency. Not 100: with 100 requests in flight,
# httpcore's pool (it matches every waiting request against every connection)
# costs more CPU than the calls, and caps any httpx client near 50 per second here.
WORKERS = 25
TRACEABILITY = {"recipient": "13002526500013", "context": "benchmark", "object": "e2e"}


def _window_start(period: float) -> tuple[float, int]:
    """The next window boundary, as (monotonic time, window index).

    The emulator's windows are aligned on its wall clock, which starts at
    ``time.time()`` and then follows the monotonic clock: the same instants.
    """
    epoch = time.time()
    first = math.floor(epoch / period) + 1
    return anyio.current_time() + (first * period - epoch), first


def _score(
    records: list[dict[str, Any]], first: int, periods: int, period: float, start: float
) -> dict[str, Any]:
    measured = range(first, first + periods)
    per_window = dict.fromkeys(measured, 0)
    for r in records:
        index = math.floor(r["epoch"] / period)
        if r["status"] == 200 and index in per_window:
            per_window[index] += 1
    ok = sum(per_window.values())
    rejected = [r for r in records if r["status"] == 429]
    banned = [r for r in records if r["outcome"] == "banned"]
    return {
        "efficiency": ok / (periods * LIMIT),
        "ok": ok,
        "429": len(rejected),
        "banned requests": len(banned),
        "calls": len(records),
        "200s per window": list(per_window.values()),
        "first 429 after": None if not rejected else rejected[0]["monotonic"] - start,
        "banned after": None if not banned else banned[0]["monotonic"] - start,
    }


Runner = Callable[[str, float, float, list[str], float], Awaitable[dict[str, Any]]]


async def _this_client(
    url: str, start: float, stop: float, sirets: list[str], period: float
) -> dict[str, Any]:
    governor = Governor(Limits(period=period), backend=InMemoryBackend())
    seen: dict[str, int] = {}
    async with AsyncClient(TOKEN, base_url=url, governor=governor, **TRACEABILITY) as client:
        await anyio.sleep_until(start)
        async with client.batch(ETABLISSEMENT_V4, sirets, concurrency=WORKERS) as outcomes:
            async for outcome in outcomes:
                seen[outcome.status] = seen.get(outcome.status, 0) + 1
                if anyio.current_time() >= stop:
                    break
    return seen


async def _aiolimiter_loop(
    url: str, start: float, stop: float, sirets: list[str], period: float
) -> dict[str, Any]:
    limiter = AsyncLimiter(LIMIT, period)
    inputs = iter(sirets)
    seen: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    pool = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)

    async with httpx.AsyncClient(base_url=url, timeout=2.0, limits=pool) as http:

        async def worker() -> None:
            for siret in inputs:
                while True:
                    async with limiter:
                        try:
                            answer = await http.get(
                                f"/v4/insee/sirene/etablissements/{siret}",
                                params=TRACEABILITY,
                                headers=headers,
                            )
                        except httpx.HTTPError as exc:
                            key = type(exc).__name__
                            seen[key] = seen.get(key, 0) + 1
                            continue
                    key = str(answer.status_code)
                    seen[key] = seen.get(key, 0) + 1
                    if answer.status_code != 429:
                        break
                    await anyio.sleep(float(answer.headers.get("retry-after", period)))

        await anyio.sleep_until(start)
        with anyio.move_on_after(stop - anyio.current_time()):
            async with anyio.create_task_group() as group:
                for _ in range(WORKERS):
                    group.start_soon(worker)
    return seen


def sync_python() -> pathlib.Path | None:
    """The interpreter of the api-entreprise environment, built on first use."""
    python = SYNC_ENV / "bin" / "python"
    if not python.exists():
        print(f"  building {SYNC_ENV.name} (pip install '{SYNC_PACKAGE}')", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(SYNC_ENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", SYNC_PACKAGE],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"  could not install {SYNC_PACKAGE}: {exc}", flush=True)
            return None
    probe = subprocess.run(
        [str(python), "-c", "import api_entreprise, pyrate_limiter; pyrate_limiter.RequestRate"],
        capture_output=True,
        check=False,
    )
    return python if probe.returncode == 0 else None


_SYNC: dict[str, pathlib.Path | None] = {}


async def _api_entreprise(
    url: str, start: float, stop: float, sirets: list[str], period: float
) -> dict[str, Any]:
    python = _SYNC.get("python")
    if python is None:
        return {"skipped": f"{SYNC_PACKAGE} could not be installed or imported"}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(sirets))
    command = [
        str(python),
        str(HERE / "_drive_api_entreprise.py"),
        f"--url={url}",
        f"--token={TOKEN}",
        f"--threads={WORKERS}",
        f"--limit={LIMIT}",
        f"--period={period}",
        f"--start={start}",
        f"--stop={stop}",
        f"--sirets={listing.name}",
    ]
    try:
        # anyio's clock is time.monotonic on asyncio: the child reads the same clock.
        done = await anyio.run_process(command, check=False)
    finally:
        os.unlink(listing.name)
    if done.returncode != 0:
        return {"skipped": f"the driver failed: {done.stderr.decode()[-300:]}"}
    seen: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return seen


CONTENDERS: dict[str, Runner] = {
    "this client (batch)": _this_client,
    "httpx + aiolimiter": _aiolimiter_loop,
    "api-entreprise (threads)": _api_entreprise,
}


def _start_server(period: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "_serve_emulator.py"), str(period), TOKEN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def run_one(name: str, periods: int, period: float) -> dict[str, Any]:
    """One contender against a fresh emulator in a process of its own."""
    sirets = luhn_sirets(periods * LIMIT * 3)
    server = await anyio.to_thread.run_sync(_start_server, period)
    try:
        assert server.stdout is not None
        url = await anyio.to_thread.run_sync(server.stdout.readline)
        url = url.strip()
        start, first = _window_start(period)
        if start - anyio.current_time() < 0.3 * period:
            start, first = start + period, first + 1  # leave time to set up
        stop = start + periods * period
        seen = await CONTENDERS[name](url, start, stop, sirets, period)
        output, _ = await anyio.to_thread.run_sync(server.communicate, "done\n")
    finally:
        if server.poll() is None:
            server.kill()
    if "skipped" in seen:
        return {"skipped": seen["skipped"]}
    records = json.loads(output.strip().splitlines()[-1])
    result = _score(records, first, periods, period, start)
    result["client saw"] = seen
    return result


async def measure(periods: int, period: float = 1.0) -> dict[str, dict[str, Any]]:
    """Every contender, one after the other."""
    _SYNC["python"] = await anyio.to_thread.run_sync(sync_python)
    return {name: await run_one(name, periods, period) for name in CONTENDERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=12)
    args = parser.parse_args()
    results = anyio.run(measure, args.periods)
    for name, row in results.items():
        print(f"## {name}")
        for key, value in row.items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
