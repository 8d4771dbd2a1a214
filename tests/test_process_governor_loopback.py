"""The process-wide governor against a strict server on loopback, from every kind of caller.

The emulator runs in uvicorn on 127.0.0.1 with half-second windows aligned on
the clock, a small limit for the token, 429s past it and bans for whoever
ignores them. The default governor (``period=0.5``) must keep every caller of
the process under that limit together: loops one after another (asyncio then
trio), threads each running its own loop and its own ``AsyncClient`` (asyncio
and trio at once), and one synchronous ``Client`` shared by sixteen threads.
Every call must complete, none may draw a 429.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import anyio
import pytest

from apientreprise_async import AsyncClient, Client, Limits
from apientreprise_async._governor import default_governor
from apientreprise_async.testing import Emulator

from .conftest import RECIPIENT, TOKEN

PERIOD = 0.5
LIMIT = 5
SIREN = "832147656"


@pytest.fixture
def server() -> Iterator[tuple[Emulator, str]]:
    """A strict emulator on loopback, and the default governor on its period."""
    emulator = Emulator(period=PERIOD)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": LIMIT})
    default_limits = default_governor().limits
    default_governor().limits = Limits(period=PERIOD)
    try:
        with emulator.serve() as url:
            yield emulator, url
    finally:
        default_governor().limits = default_limits  # resets keep configured limits


def options(url: str) -> dict[str, object]:
    # No coalescing: every call is a request the server counts.
    return {
        "base_url": url,
        "recipient": RECIPIENT,
        "context": "tests",
        "object": "loopback",
        "check_maintenance": False,
        "coalesce": False,
    }


async def calls(url: str, count: int) -> None:
    """``count`` concurrent calls from a new AsyncClient on the default governor."""
    client = AsyncClient(TOKEN, **options(url))  # type: ignore[arg-type]
    async with client, anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(client.insee.unites_legales, SIREN)


def check(emulator: Emulator, expected: int) -> None:
    """Every call answered 200: no 429, no ban, no server window over the limit.

    The server's windows are aligned on the clock: the governor may send more
    than the limit within a sliding period that straddles two of them.
    """
    statuses = [r.status for r in emulator.requests]
    assert [200] * expected == statuses
    windows = Counter(math.floor(r.epoch / PERIOD) for r in emulator.requests)
    assert max(windows.values()) <= LIMIT


def in_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_asyncio_then_trio(server: tuple[Emulator, str]) -> None:
    """``anyio.run`` on asyncio, then on trio (whose clock has another origin): no burst."""
    emulator, url = server
    anyio.run(calls, url, 8, backend="asyncio")
    anyio.run(calls, url, 8, backend="trio")
    check(emulator, 16)


def test_threads_each_with_its_loop_and_client(server: tuple[Emulator, str]) -> None:
    """Six threads at once, three ``asyncio.run`` and three trio, each with its own client."""
    emulator, url = server

    def on_asyncio() -> None:
        asyncio.run(calls(url, 3))

    def on_trio() -> None:
        anyio.run(calls, url, 3, backend="trio")

    in_threads([on_asyncio, on_trio] * 3)
    check(emulator, 18)


def test_one_sync_client_shared_by_sixteen_threads(server: tuple[Emulator, str]) -> None:
    """The synchronous client, one call per thread, all at once."""
    emulator, url = server
    with Client(TOKEN, **options(url)) as client:  # type: ignore[arg-type]
        in_threads([lambda: _one(client)] * 16)
    check(emulator, 16)


def _one(client: Client) -> None:
    assert SIREN == client.insee.unites_legales(SIREN).data.siren
