"""One worker process of the multi-process acceptance test (``python -m tests._redis_worker``).

It builds an :class:`AsyncClient` on the emulator's URL with a governor on
Redis (or in memory), prints ``ready``, waits for a line on stdin, then runs
``calls`` distinct calls with ``tasks`` concurrent tasks and prints one JSON
line: statuses counted, errors by type, elapsed seconds, and for each call
sent when it was asked for and when the governor let it go (epoch seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import anyio

from apientreprise_async import AsyncClient, Governor, Limits, Timeouts
from apientreprise_async._errors import ApiEntrepriseError, ApiError, TransportError
from apientreprise_async.audit import AuditRecord
from apientreprise_async.backends import GovernorBackend, InMemoryBackend
from apientreprise_async.redis import RedisUnavailableError

OP = "api_entreprise_v4_insee_unites_legales"
RECIPIENT = "13002526500013"


def siren(number: int) -> str:
    """A SIREN with a valid Luhn key, distinct for each ``number`` below 10**8."""
    body = f"{number:08d}"
    total = 0
    for index, char in enumerate(reversed(body)):
        digit = int(char) * (2 if index % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return body + str((10 - total % 10) % 10)


def audit_grants(granted: list[tuple[float, float]]) -> Callable[[AuditRecord], None]:
    """An audit sink noting, for each call sent, when it was asked for and let go."""

    def keep(record: AuditRecord) -> None:
        if record.http_status is not None:  # sent: the governor let it go
            asked = record.timestamp.timestamp() - record.duration
            granted.append((round(asked, 4), round(asked + record.governor_wait, 4)))

    return keep


def share_of_offer(
    arrivals: Iterable[float], reports: Iterable[dict[str, Any]], period: float, limit: int
) -> tuple[float, float, int]:
    """Of what the clients offered each full server window, the share that was let go.

    ``arrivals``: the server's arrival times (epoch) of the calls the limit binds;
    ``reports``: the workers' reports (their ``granted`` lists). A window's offer
    is its calls plus those the governor held past its end (asked for before it,
    let go after), at most the limit. A window left short while calls waited in
    the governor is the governor's doing; one left short with nothing waiting is
    the machine's (a starved CPU asked for less), not the governor's. Returns the
    share by arrivals at the server and by the governor's grants, and the number
    of full windows.
    """
    arrived = Counter(int(t // period) for t in arrivals)
    full = range(min(arrived) + 1, max(arrived))
    let_go: Counter[int] = Counter()
    held: Counter[int] = Counter()
    for report in reports:
        for asked, granted in report["granted"]:
            let_go[int(granted // period)] += 1
            for window in range(int(asked // period), int(granted // period)):
                held[window] += 1
    offered = sum(min(limit, arrived[w] + held[w]) for w in full)
    taken = sum(min(limit, arrived[w]) for w in full)
    # The governor bound (calls waited for it) in some window, or the share proves nothing.
    assert offered > taken or any(arrived[w] >= limit for w in full), (arrived, held)
    by_arrival = taken / max(1, offered)
    by_grant = sum(min(limit, let_go[w]) for w in full) / max(
        1, sum(min(limit, let_go[w] + held[w]) for w in full)
    )
    return by_arrival, by_grant, len(full)


async def work(args: argparse.Namespace) -> dict[str, Any]:
    """Wait for the go, run the calls, count what came back."""
    backend: GovernorBackend
    if args.backend == "redis":
        from apientreprise_async.redis import RedisBackend

        backend = RedisBackend(
            args.redis,
            prefix=args.prefix,
            workers=args.workers,
            fail_mode=args.fail_mode,
            recheck=args.recheck,
            timeout=args.timeout,
        )
    else:
        backend = InMemoryBackend()
    statuses: Counter[str] = Counter()
    granted: list[tuple[float, float]] = []
    async with AsyncClient(
        args.token,
        base_url=args.url,
        governor=Governor(Limits(period=args.period, ip=args.ip), backend=backend),
        recipient=RECIPIENT,
        context="acceptance",
        object="redis",
        check_maintenance=False,
        coalesce=False,
        circuit=None,
        timeouts=Timeouts(json=args.timeout, connect=args.timeout),
        audit=audit_grants(granted),
    ) as client:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        started = anyio.current_time()
        numbers = iter(range(args.index * 1_000_000, (args.index + 1) * 1_000_000))
        left = args.calls

        async def one(number: int) -> None:
            for attempt in range(args.retry_refused + 1):
                try:
                    await client.call(OP, siren=siren(number))
                    statuses["200"] += 1
                except ApiError as exc:
                    statuses[str(exc.http_status or "local")] += 1
                except TransportError:
                    statuses["no answer"] += 1  # a banned IP: the server stays silent
                except RedisUnavailableError:
                    # Refused before sending (fail closed): as an application would, try
                    # again a little later, up to --retry-refused times.
                    if attempt == args.retry_refused:
                        statuses["RedisUnavailableError"] += 1
                    else:
                        await anyio.sleep(args.period / 4)
                        continue
                except ApiEntrepriseError as exc:
                    statuses[type(exc).__name__] += 1
                return

        async def task() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(next(numbers))

        with anyio.move_on_after(args.deadline):
            async with anyio.create_task_group() as tg:
                for _ in range(args.tasks):
                    tg.start_soon(task)
        elapsed = anyio.current_time() - started
        if left > 0 or elapsed >= args.deadline:
            print(repr(client.governor), client.governor.snapshot(), file=sys.stderr)
    if args.backend == "redis":
        await backend.aclose()  # type: ignore[attr-defined]
    losses = getattr(backend, "losses", 0)
    return {
        "statuses": dict(statuses),
        "elapsed": elapsed,
        "cpu": time.process_time(),
        "left": left,
        "losses": losses,
        "granted": granted,
    }


def main() -> None:
    """Parse the arguments, run on asyncio, print the result."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--backend", choices=["redis", "memory"], required=True)
    parser.add_argument("--redis", default="")
    parser.add_argument("--prefix", default="acceptance")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--calls", type=int, default=375)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--ip", type=int, default=1000)
    parser.add_argument("--fail-mode", choices=["closed", "local"], default="closed")
    parser.add_argument("--recheck", type=float, default=5.0)
    parser.add_argument("--retry-refused", type=int, default=0)
    result = anyio.run(work, parser.parse_args(), backend="asyncio")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
