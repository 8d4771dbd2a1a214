"""Per-call overhead of the client against a bare ``httpx.AsyncClient`` loop.

Run alone: ``.venv/bin/python benchmarks/bench_overhead.py`` (about half a minute).
A trivial ASGI app answers every GET with the staging unité légale v4 body,
with no rate-limit headers; the governor gets limits nobody reaches
(``10**9`` per group and for the IP, no slow start), so nothing waits. Three
contenders, called one after the other (no concurrency), in interleaved rounds:

- bare: ``await http.get(path, params=traceability, headers=auth)`` then
  ``.json()["data"]["siren"]``;
- client, typed: ``await client.insee.unites_legales(siren)``, a frozen record
  (validation, governor, coalescing, circuit, audit counters, structuring);
- client, ``get``: ``await client.get(path)``, the same pipeline returning JSON.

Twice: in process (``httpx.ASGITransport``; CPU time, all of it ours) and
over loopback (uvicorn in a child process on 127.0.0.1, keep-alive; wall
time per call, the target's measure, and this process's CPU time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from _common import UNITE_LEGALE_V4, async_per_call, median, paired_ratio, payload, staging_case

from apientreprise_async import AsyncClient, Governor, Limits
from apientreprise_async._catalogue import GROUP_LIMITS
from apientreprise_async.backends import InMemoryBackend

BODY, _SOURCE = payload(UNITE_LEGALE_V4)
_CASE = staging_case(UNITE_LEGALE_V4)
SIREN = str(_CASE[0]["siren"]) if _CASE else "418166096"
PATH = f"/v4/insee/sirene/unites_legales/{SIREN}"
TRACEABILITY = {"recipient": "13002526500013", "context": "benchmark", "object": "overhead"}
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The trivial server: one fixed JSON answer, nothing else."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def unlimited() -> Governor:
    """A private governor whose limits no benchmark reaches: admission never waits."""
    limits = Limits(
        groups=dict.fromkeys(GROUP_LIMITS, 10**9), ip=10**9, slow_start=False, margin=0.0
    )
    return Governor(limits, backend=InMemoryBackend())


Contenders = dict[str, Callable[[], Awaitable[Any]]]


def contenders(bare: httpx.AsyncClient, client: AsyncClient) -> Contenders:
    """The three calls compared, each returning the SIREN it read."""

    async def bare_call() -> Any:
        answer = await bare.get(PATH, params=TRACEABILITY, headers={"Authorization": "Bearer x"})
        return answer.json()["data"]["siren"]

    async def typed_call() -> Any:
        return (await client.insee.unites_legales(SIREN)).data.siren

    async def get_call() -> Any:
        return (await client.get(PATH)).data["siren"]

    return {"bare httpx": bare_call, "client, typed": typed_call, "client, get": get_call}


async def _rounds(calls: Contenders, rounds: int, per_round: int) -> dict[str, dict[str, list]]:
    """Wall and CPU microseconds per call, per round, for every contender."""
    for call in calls.values():  # warm up: connections, generated hooks, caches
        for _ in range(per_round):
            await call()
    found: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            cpu = time.process_time()
            found[name]["wall"].append(await async_per_call(call, per_round, time.perf_counter))
            found[name]["cpu"].append((time.process_time() - cpu) / per_round * 1e6)
    return found


def _summary(found: dict[str, dict[str, list[float]]], measure: str) -> dict[str, Any]:
    base = found["bare httpx"][measure]
    return {
        name: {
            "us": median(series[measure]),
            "ratio": paired_ratio(series[measure], base),
            "cpu us": median(series["cpu"]),
            "cpu ratio": paired_ratio(series["cpu"], found["bare httpx"]["cpu"]),
        }
        for name, series in found.items()
    }


def _client(**kwargs: Any) -> AsyncClient:
    return AsyncClient(
        "benchmark-token",
        governor=unlimited(),
        recipient=TRACEABILITY["recipient"],
        context=TRACEABILITY["context"],
        object=TRACEABILITY["object"],
        **kwargs,
    )


async def in_process(rounds: int, per_round: int) -> dict[str, Any]:
    """Both clients on ``httpx.ASGITransport``: CPU time is the whole cost."""
    base = "http://127.0.0.1"  # loopback: the client sends a token over plain http only there
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as bare,
        _client(transport=httpx.ASGITransport(app=app), base_url=base) as client,
    ):
        found = await _rounds(contenders(bare, client), rounds, per_round)
    return _summary(found, "cpu")


_SERVER = """
import socket, sys
sys.path.insert(0, {folder!r})
import uvicorn
from bench_overhead import app
sock = socket.socket()
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, interface="asgi3", log_level="warning", access_log=False,
                        lifespan="off")
uvicorn.Server(config).run(sockets=[sock])
"""


def start_server() -> tuple[subprocess.Popen[str], str]:
    """uvicorn serving :func:`app` in a child process; its base URL."""
    folder = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER.format(folder=folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return child, f"http://127.0.0.1:{port}"


async def loopback(rounds: int, per_round: int) -> dict[str, Any]:
    """Both clients over a real socket to uvicorn in another process: wall time."""
    child, base = start_server()
    try:
        async with (
            httpx.AsyncClient(base_url=base) as bare,
            _client(base_url=base) as client,
        ):
            found = await _rounds(contenders(bare, client), rounds, per_round)
    finally:
        child.terminate()
        child.wait(10)
    return _summary(found, "wall")


async def measure(rounds: int, per_round: int) -> dict[str, Any]:
    """Both settings; per contender: median microseconds and ratio to bare httpx."""
    return {
        "in process (ASGITransport), CPU time": await in_process(rounds, per_round),
        "loopback (uvicorn, other process), wall time": await loopback(rounds, per_round),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()
    for setting, rows in asyncio.run(measure(args.rounds, args.per_round)).items():
        print(f"## {setting}")
        for name, row in rows.items():
            print(
                f"  {name:15s} {row['us']:8.1f} us  {row['ratio']:5.2f} x bare"
                f"   (CPU {row['cpu us']:7.1f} us, {row['cpu ratio']:5.2f} x)"
            )


if __name__ == "__main__":
    main()
