"""The Redis governor when Redis fails or forgets: no window over the limit, no call stuck.

Two clients, each with a governor on a :class:`RedisBackend` of its own (as two
worker processes), share one token and the IP bucket (limit 20) against the
emulator. They spend a window's budget, Redis then fails or forgets in some
way, and they ask at once for another window's worth. Whatever the fault, the
busiest span of one period at the server holds at most 20 calls, and every call
ends (answered, or refused with a clear error) within four periods.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from apientreprise_async import AsyncClient, Governor, Limits
from apientreprise_async._errors import ApiEntrepriseError, ApiError, RateLimitError
from apientreprise_async.backends import Feedback, Grant, InMemoryBackend, SlotRequest
from apientreprise_async.host import HostBackend
from apientreprise_async.redis import RedisBackend, RedisUnavailableError
from apientreprise_async.testing import Emulator

from ._fake_throttle import json_endpoint
from ._redis_server import RedisProcess
from ._redis_worker import siren
from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

PERIOD = 0.5
IP_LIMIT = 20
OP = "api_entreprise_v4_insee_unites_legales"


@pytest.fixture
def anyio_backend() -> Any:
    """Asyncio only (see tests/_redis_server.ASYNCIO_ONLY)."""
    return "asyncio"


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may kill and restart."""
    process = RedisProcess().start()
    try:
        yield process
    finally:
        process.stop()


async def dump(url: str) -> dict[bytes, tuple[bytes, int]]:
    """Every key's serialized value and time to live: the state a replica would hold."""
    async with aioredis.Redis.from_url(url) as client:
        keys = await client.keys("*")
        return {key: (await client.dump(key), await client.pttl(key)) for key in keys}


async def restore(url: str, snapshot: dict[bytes, tuple[bytes, int]]) -> None:
    async with aioredis.Redis.from_url(url) as client:
        for key, (value, ttl) in snapshot.items():
            await client.restore(key, max(ttl, 0), value, replace=True)


async def flush(url: str) -> None:
    async with aioredis.Redis.from_url(url) as client:
        await client.flushall()


async def evict(url: str, pattern: str) -> None:
    """What ``allkeys-lru`` may do: drop some of the governor's keys, nothing else."""
    async with aioredis.Redis.from_url(url) as client:
        for key in await client.keys(pattern):
            await client.delete(key)


async def run_scenario(
    server: RedisProcess, fail_mode: str, fault: Callable[[], Any] | None
) -> tuple[int, Counter[str], float]:
    """A window's budget, the fault, another window's worth; the busiest span and outcomes."""
    emulator = Emulator(period=PERIOD, ip_limit=IP_LIMIT)
    emulator.add_token(TOKEN)
    prefix = f"f{os.urandom(3).hex()}"
    limits = Limits(period=PERIOD, ip=IP_LIMIT)
    outcomes: Counter[str] = Counter()
    async with (
        RedisBackend(server.url, prefix=prefix, fail_mode=fail_mode, workers=2) as first,  # type: ignore[arg-type]
        RedisBackend(server.url, prefix=prefix, fail_mode=fail_mode, workers=2) as second,  # type: ignore[arg-type]
    ):
        clients = [
            AsyncClient(
                token=TOKEN,
                transport=emulator.transport(),
                base_url="https://emulator.test",
                recipient=RECIPIENT,
                context="faults",
                object="redis",
                governor=Governor(limits, backend=backend),
                check_maintenance=False,
                coalesce=False,
                circuit=None,
            )
            for backend in (first, second)
        ]
        numbers = iter(range(1000))

        async def one(client: AsyncClient) -> None:
            try:
                await client.call(OP, siren=siren(next(numbers)))
                outcomes["answered"] += 1
            except ApiError:
                outcomes["answered"] += 1  # an error answer, counted by the server all the same
            except ApiEntrepriseError as exc:
                outcomes[type(exc).__name__] += 1

        async def wave() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(IP_LIMIT):
                    tg.start_soon(one, clients[i % 2])

        async with clients[0], clients[1]:
            with anyio.fail_after(4 * PERIOD + 2):  # slow start and the first wave
                await wave()
            if fault is not None:
                await fault()
            started = anyio.current_time()
            # No call may still wait four periods after it was asked for.
            with anyio.fail_after(4 * PERIOD):
                await wave()
            took = anyio.current_time() - started
    return emulator.max_calls_in_any_window(), outcomes, took


SCENARIOS: dict[str, tuple[str, Callable[[RedisProcess], Any] | None]] = {
    "closed-no-fault": ("closed", None),
    "closed-restarted": ("closed", lambda s: anyio.to_thread.run_sync(s.restart)),
    "closed-flushed": ("closed", lambda s: flush(s.url)),
    "closed-buckets-evicted": ("closed", lambda s: evict(s.url, "{f*}:*/*")),
    "closed-ends-evicted": ("closed", lambda s: evict(s.url, "{f*}:*:e")),
    "closed-epoch-evicted": ("closed", lambda s: evict(s.url, "{f*}:epoch")),
    "local-restarted": ("local", lambda s: anyio.to_thread.run_sync(s.restart)),
    "local-killed": ("local", lambda s: anyio.to_thread.run_sync(s.stop)),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_a_fault_between_two_windows_never_overfills_one(
    server: RedisProcess, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Busiest span of a period <= the IP limit, and every call ends within four periods."""
    fail_mode, fault = SCENARIOS[name]
    busiest, outcomes, took = await run_scenario(
        server, fail_mode, None if fault is None else (lambda: fault(server))
    )
    with capsys.disabled():
        print(f"\n[{name}] busiest {busiest}/{IP_LIMIT}, {dict(outcomes)}, wave 2 in {took:.2f} s")
    assert busiest <= IP_LIMIT
    assert 2 * IP_LIMIT == sum(outcomes.values())
    # Refusals are clear errors (fail closed while Redis restarts); nothing else fails.
    assert set(outcomes) <= {"answered", RedisUnavailableError.__name__}
    assert outcomes["answered"] >= IP_LIMIT


async def test_a_lagging_replica_promoted_is_seen_and_survived(server: RedisProcess) -> None:
    """The state goes back in time (a replica that missed the last writes): a new epoch.

    The worker that wrote what was lost sees the epoch's write counter go back,
    starts a new epoch and writes its calls back; nobody is granted a third call.
    """
    prefix = f"g{os.urandom(3).hex()}"
    bucket = [SlotRequest("fp/b", 2), SlotRequest("ip", 20)]
    async with RedisBackend(server.url, prefix=prefix) as first:
        grant = await first.acquire(bucket)
        assert isinstance(grant, Grant)
        await first.release(grant, end=anyio.current_time() + 0.5)
        snapshot = await dump(server.url)  # what the replica had
        grant = await first.acquire(bucket)
        assert isinstance(grant, Grant)
        await first.release(grant, end=anyio.current_time() + 0.5)
        await anyio.to_thread.run_sync(server.restart)
        await restore(server.url, snapshot)  # promoted: it lacks the last call
        assert not isinstance(await first.acquire(bucket), Grant)
        assert 1 == first.losses
        async with RedisBackend(server.url, prefix=prefix) as second:
            assert not isinstance(await second.acquire(bucket), Grant)


async def test_a_new_worker_after_a_flush_waits_for_the_others_to_write_back(
    server: RedisProcess,
) -> None:
    """A worker with no history cannot tell a new Redis from an emptied one: the ones
    that listen tell it, and their calls are written back before it gets a slot."""
    prefix = f"h{os.urandom(3).hex()}"
    bucket = [SlotRequest("fp/b", 2)]
    async with RedisBackend(server.url, prefix=prefix) as old:
        for _ in range(2):
            grant = await old.acquire(bucket)
            assert isinstance(grant, Grant)
            await old.release(grant, end=anyio.current_time() + 0.6)
        await flush(server.url)
        async with RedisBackend(server.url, prefix=prefix) as new:
            blocked = await new.acquire(bucket)
            assert not isinstance(blocked, Grant)
            await anyio.sleep(0.1)  # the old worker heard of the new epoch and wrote back
            assert 1 == old.losses
            (ready,) = await new.ready(bucket)
            assert ready is not None
            assert ready >= anyio.current_time() + 0.3  # its two calls still count


# -- nonsense from the server -----------------------------------------------------------


async def backends(server: RedisProcess, folder: pathlib.Path) -> list[Any]:
    """The three built-in backends: in memory, on the host (SQLite), in Redis."""
    return [
        InMemoryBackend(),
        HostBackend(folder),
        RedisBackend(server.url, prefix=f"n{os.urandom(3).hex()}"),
    ]


@pytest.mark.parametrize("limit", [0, -5, 10**12])
async def test_a_nonsense_limit_pauses_until_its_reset_then_recovers(
    server: RedisProcess, limit: int, caplog: pytest.LogCaptureFixture, tmp_path: pathlib.Path
) -> None:
    """RateLimit-Limit 0, negative or absurd: a pause until the reset, a log line, then calls."""
    caplog.set_level(logging.WARNING)
    for backend in await backends(server, tmp_path):
        request = [SlotRequest("fp/b", 5, "op"), SlotRequest("ip", 100)]
        grant = await backend.acquire(request)
        assert isinstance(grant, Grant)
        now = anyio.current_time()
        await backend.release(grant, end=None, feedback=Feedback(limit, 0, now + 0.3))
        blocked = await backend.acquire(request)
        assert not isinstance(blocked, Grant)
        assert blocked.ready[0] is not None
        assert now + 0.25 <= blocked.ready[0] <= now + 0.4
        await anyio.sleep_until(now + 0.35)
        again = await backend.acquire(request)
        assert isinstance(again, Grant), "the bucket must recover after the reset"
        await backend.release(again, end=None, feedback=Feedback(5, 4, anyio.current_time() + 0.3))
        assert 5 == backend.snapshot()["fp/b"].limit
        if isinstance(backend, RedisBackend):
            await backend.aclose()
    assert f"RateLimit-Limit {limit}, which means nothing" in caplog.text


async def test_a_reset_far_in_the_future_is_bounded(
    server: RedisProcess, tmp_path: pathlib.Path
) -> None:
    """A Reset a year away holds a bucket at most an hour (as Retry-After), in every backend."""
    for backend in await backends(server, tmp_path):
        request = [SlotRequest("fp/b", 5, "op")]
        grant = await backend.acquire(request)
        assert isinstance(grant, Grant)
        now = anyio.current_time()
        year = 365 * 86400.0
        await backend.release(grant, end=None, feedback=Feedback(0, 0, now + year))
        blocked = await backend.acquire(request)
        assert not isinstance(blocked, Grant)
        assert blocked.ready[0] is not None
        assert blocked.ready[0] <= now + 3600 + 1
        grant = await backend.acquire([SlotRequest("fp/c", 5, "op")])
        assert isinstance(grant, Grant)
        await backend.release(grant, end=None, feedback=Feedback(5, 0, now + year))
        (ready,) = await backend.ready([SlotRequest("fp/c", 5, "op")])
        assert ready is not None
        assert ready <= now + 3600 + 1
        if isinstance(backend, RedisBackend):
            await backend.aclose()


@pytest.mark.parametrize("kind", ["memory", "host", "redis"])
async def test_an_answer_saying_limit_zero_never_blocks_a_governor(
    server: RedisProcess, tmp_path: pathlib.Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The review's case, through the governor: one answer with ``RateLimit-Limit: 0`` used
    to hang every later call (no ``max_wait``) and tell ``max_wait`` callers to retry in about
    a second, forever. Now: a pause until the reset, the true wait told, then calls again."""
    caplog.set_level(logging.WARNING)
    backend: Any = {
        "memory": InMemoryBackend,
        "host": lambda: HostBackend(tmp_path),
        "redis": lambda: RedisBackend(server.url, prefix=f"z{os.urandom(3).hex()}"),
    }[kind]()
    limits = Limits(groups={"json_resources_entreprise": 5}, period=0.3, slow_start=False)
    gov = Governor(limits, backend=backend)
    endpoint = json_endpoint("op_a")
    try:
        async with gov.permit("fp", endpoint) as permit:
            permit.sending()
            zero = {"RateLimit-Limit": "0", "RateLimit-Remaining": "0", "RateLimit-Reset": "0.3"}
            permit.observe(200, zero)
        paused_at = anyio.current_time()
        with pytest.raises(RateLimitError) as info:
            async with gov.permit("fp", endpoint, max_wait=0.01):
                pass
        assert info.value.retry_after is not None
        assert 0.1 < info.value.retry_after <= 0.4
        with anyio.fail_after(2):  # no max_wait: it waits for the reset, not for ever
            async with gov.permit("fp", endpoint) as permit:
                permit.sending()
                sane = {
                    "RateLimit-Limit": "5",
                    "RateLimit-Remaining": "4",
                    "RateLimit-Reset": "0.3",
                }
                permit.observe(200, sane)
        assert anyio.current_time() - paused_at >= 0.25
        assert 5 == backend.snapshot()["fp/json_resources_entreprise"].limit
        assert "RateLimit-Limit 0, which means nothing" in caplog.text
    finally:
        if isinstance(backend, RedisBackend):
            await backend.aclose()


async def test_a_pause_heard_before_redis_died_holds_in_local_mode(server: RedisProcess) -> None:
    """Redis gone (fail_mode='local'): a 429 pause heard from another worker still
    holds, so a call waits for its end instead of being granted and then refused."""
    endpoint = json_endpoint("op_a")
    limits = Limits(groups={"json_resources_entreprise": 100}, period=0.25, slow_start=False)
    prefix = f"p{os.urandom(3).hex()}"
    async with (
        RedisBackend(server.url, prefix=prefix, fail_mode="local", timeout=0.3) as one,  # type: ignore[arg-type]
        RedisBackend(server.url, prefix=prefix, fail_mode="local", timeout=0.3) as two,  # type: ignore[arg-type]
    ):
        first, second = Governor(limits, backend=one), Governor(limits, backend=two)
        async with second.permit("fp", endpoint) as permit:  # the second worker knows the bucket
            permit.sending()
            permit.observe(200, {})
        async with first.permit("fp", endpoint) as permit:
            permit.sending()
            permit.observe(429, {"Retry-After": "1"})
        paused_at = anyio.current_time()
        await anyio.sleep(0.1)  # the pause travels by message
        assert max(two.paused_until(key) for key in two.snapshot()) > paused_at
        await anyio.to_thread.run_sync(server.stop)
        async with second.permit("fp", endpoint) as permit:
            permit.sending()  # waited for the pause's end: not refused
            sent = anyio.current_time()
        assert sent >= paused_at + 1.0 - 0.1
