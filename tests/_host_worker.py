"""One worker process of the host-sharing tests (``python -m tests._host_worker``).

It builds one :class:`AsyncClient` per token on the emulator's URL, with the
default governor (nothing configured for sharing) or an explicit backend,
prints ``ready``, waits for a line on stdin, then runs ``calls`` distinct
calls with ``tasks`` concurrent tasks spread over the tokens, and prints one
JSON line: statuses counted, elapsed seconds, when each call sent was asked for
and let go by the governor. Every tenth call answered prints
``progress N`` so that a test can kill it in the middle.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from typing import Any

import anyio

from apientreprise_async import AsyncClient, Governor, Limits, Timeouts
from apientreprise_async._errors import ApiEntrepriseError, ApiError, TransportError
from apientreprise_async.backends import InMemoryBackend

from ._redis_worker import OP, RECIPIENT, audit_grants, siren


async def work(args: argparse.Namespace) -> dict[str, Any]:
    """Wait for the go, run the calls, count what came back."""
    limits = Limits(period=args.period or 60.0, ip=args.ip)
    if args.backend == "default" and not args.period:
        options: dict[str, Any] = {}  # a default client, as a new user writes it
    elif args.backend == "default":
        options = {"limits": limits}
    elif args.backend == "host":
        from apientreprise_async.host import HostBackend

        options = {"governor": Governor(limits, backend=HostBackend(args.directory))}
    else:
        options = {"governor": Governor(limits, backend=InMemoryBackend())}
    statuses: Counter[str] = Counter()
    granted: list[tuple[float, float]] = []
    clients = []
    for token in args.tokens.split(","):
        client = AsyncClient(
            token,
            base_url=args.url,
            recipient=RECIPIENT,
            context="acceptance",
            object="host",
            check_maintenance=False,
            coalesce=False,
            circuit=None,
            timeouts=Timeouts(json=args.timeout, connect=args.timeout),
            audit=audit_grants(granted),
            **options,
        )
        if "governor" not in options:
            options = {"governor": client.governor}  # one governor per process, as a user would
        clients.append(client)
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    started = anyio.current_time()
    numbers = iter(range(args.index * 1_000_000, (args.index + 1) * 1_000_000))
    left = args.calls
    done = 0

    async def task(client: AsyncClient) -> None:
        nonlocal left, done
        while left > 0:
            left -= 1
            try:
                await client.call(OP, siren=siren(next(numbers)))
                statuses["200"] += 1
            except ApiError as exc:
                statuses[str(exc.http_status or "local")] += 1
            except TransportError:
                statuses["no answer"] += 1  # a banned IP: the server stays silent
            except ApiEntrepriseError as exc:
                statuses[type(exc).__name__] += 1
            done += 1
            if done % 10 == 0:
                print(f"progress {done}", flush=True)

    with anyio.move_on_after(args.deadline):
        async with anyio.create_task_group() as tg:
            for index in range(args.tasks):
                tg.start_soon(task, clients[index % len(clients)])
    elapsed = anyio.current_time() - started
    for client in clients:
        await client.aclose()
    return {"statuses": dict(statuses), "elapsed": elapsed, "granted": granted}


def main() -> None:
    """Parse the arguments, run on asyncio, print the result."""
    if os.environ.get("HOST_WORKER_LOG"):
        logging.basicConfig(level=logging.INFO, format="%(created).3f %(process)d %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--backend", choices=["default", "host", "memory"], default="default")
    parser.add_argument("--directory", default=None)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--period", type=float, default=1.0, help="0: a default client")
    parser.add_argument("--ip", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=30.0)
    result = anyio.run(work, parser.parse_args(), backend="asyncio")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
