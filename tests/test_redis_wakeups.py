"""Lost wake-ups: a release landing while a waiter's own script is on its way back.

Each test runs the real Lua script, then, before its reply reaches the
waiter, lets a release happen (in this process or through another backend)
and delivers its wake-up. Before the fix the waiter acted on the stale
"blocked until a release" reply and slept until ``recheck`` (set to 30 s
here, so a lost wake-up fails the test's 3 s deadline).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

from apientreprise_async import _governor
from apientreprise_async._governor import IP_KEY, Governor, Limits
from apientreprise_async.backends import SlotRequest
from apientreprise_async.redis import RedisBackend

from ._fake_throttle import json_endpoint
from ._redis_server import redis_server

pytestmark = pytest.mark.anyio

PERIOD = 0.25
JSON = json_endpoint("op_a")
BUCKET = "fp/json_resources_entreprise"


@pytest.fixture
def anyio_backend() -> Any:
    """Asyncio only (see tests/_redis_server.ASYNCIO_ONLY)."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's redis-server, killed at teardown."""
    with redis_server() as url:
        yield url


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    """Two workers' backends on one fresh prefix; no safety net within the tests' deadline."""
    prefix = f"w{os.urandom(4).hex()}"
    async with RedisBackend(redis_url, prefix=prefix, recheck=30.0) as first:
        # The first worker alone starts the epoch: nobody else listens yet, so no
        # moment is left for others to claim a lost state (see RedisBackend).
        await first.ready([SlotRequest("warm-up", 1)])
        async with RedisBackend(redis_url, prefix=prefix, recheck=30.0) as second:
            yield first, second


def governor(backend: RedisBackend, limit: int = 1, ip: int = 100) -> Governor:
    limits = Limits(
        groups={"json_resources_entreprise": limit}, ip=ip, period=PERIOD, slow_start=False
    )
    return Governor(limits, backend=backend)


def race_queued_acquire(backend: RedisBackend, meanwhile: Callable[[], Awaitable[None]]) -> None:
    """Run ``meanwhile`` between the script and its reply, once, for a queued waiter's acquire.

    Only an acquire by a waiter already in the bucket queue (not the hot path)
    is delayed: that waiter decides how to sleep from the reply.
    """
    real = backend._scripts["ACQUIRE"]
    armed = True

    async def acquire(*, keys: list[str], args: list[str]) -> Any:
        nonlocal armed
        reply = await real(keys=keys, args=args)
        shared = _governor._SHARED.get(backend)
        queue = None if shared is None else shared.queues.get(BUCKET)
        if armed and "a" in args[9:10] and queue is not None and queue.size:
            armed = False
            await meanwhile()
        return reply

    backend._scripts["ACQUIRE"] = acquire  # type: ignore[assignment]


async def test_a_release_in_this_process_during_the_heads_acquire_wakes_it(
    pair: tuple[RedisBackend, RedisBackend],
) -> None:
    """The head's acquire saw the bucket full; this process's release lands before the reply."""
    backend, _ = pair
    gov = governor(backend)
    leave, left = anyio.Event(), anyio.Event()

    async def release_first() -> None:
        leave.set()
        await left.wait()

    race_queued_acquire(backend, release_first)

    async def holder() -> None:
        async with gov.permit("fp", JSON) as permit:
            permit.sending()  # its slot stays occupied for a hold after the release
            await leave.wait()
        left.set()

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.sleep(0.05)
            async with gov.permit("fp", JSON) as permit:
                permit.sending()


async def test_a_release_elsewhere_during_an_acquire_blocked_by_the_ip_wakes_it(
    pair: tuple[RedisBackend, RedisBackend],
) -> None:
    """Its bucket is free, the IP full: the wake-up for the IP comes before the waiter queues."""
    here, there = pair
    mine, theirs = governor(here, limit=10, ip=1), governor(there, limit=10, ip=1)
    leave, heard = anyio.Event(), anyio.Event()
    on_message = here._on_message

    def hear(data: str) -> None:
        on_message(data)
        if " w " in data and data.endswith(here._name(IP_KEY)):
            heard.set()

    here._on_message = hear  # type: ignore[method-assign]

    async def release_and_publish() -> None:
        leave.set()
        await heard.wait()  # delivered before the waiter reads its reply

    race_queued_acquire(here, release_and_publish)

    async def holder() -> None:
        async with theirs.permit("other", JSON):
            await leave.wait()

    with anyio.fail_after(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.sleep(0.05)
            async with mine.permit("fp", JSON) as permit:
                permit.sending()


async def test_more_calls_at_once_than_the_pool_holds_wait_for_a_connection(
    redis_url: str,
) -> None:
    """Past redis-py's 100 connections, calls queue for a connection: no false outage.

    A full pool used to look like Redis being down: calls refused (fail
    closed), slots of failed releases held for a whole lease, and the wake-up
    listener unsubscribed for a second.
    """
    prefix = f"w{os.urandom(4).hex()}"
    async with RedisBackend(redis_url, prefix=prefix) as backend:
        gov = governor(backend, limit=1000, ip=1000)

        async def one() -> None:
            async with gov.permit("fp", JSON) as permit:
                permit.sending()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(250):
                    tg.start_soon(one)
        assert "mode=redis" in repr(backend)
