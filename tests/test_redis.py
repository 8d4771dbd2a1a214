"""RedisBackend against a real redis-server of this module's own (asyncio only, see ASYNCIO_ONLY)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from apientreprise_async._clock import current_time
from apientreprise_async._errors import RateLimitError
from apientreprise_async._governor import Governor, Limits
from apientreprise_async.backends import GovernorBackend, SlotRequest
from apientreprise_async.redis import RedisBackend, RedisUnavailableError
from apientreprise_async.testing import check_backend

from ._fake_throttle import json_endpoint
from ._redis_server import ASYNCIO_ONLY, RedisProcess, free_port, redis_server
from .conftest import ROOT

pytestmark = pytest.mark.anyio

PERIOD = 0.25
JSON = json_endpoint("op_a")


@pytest.fixture
def anyio_backend() -> Any:
    """Asyncio only: redis-py's asyncio client (and so RedisBackend) does not run on trio."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's redis-server, killed at teardown."""
    with redis_server() as url:
        yield url


@pytest.fixture
async def views(redis_url: str) -> AsyncIterator[Any]:
    """``views()`` makes a new RedisBackend on one fresh prefix; all are closed at the end."""
    prefix = f"t{os.urandom(4).hex()}"
    made: list[RedisBackend] = []

    def make(**kw: Any) -> RedisBackend:
        kw.setdefault("prefix", prefix)
        backend = RedisBackend(redis_url, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


def governor(backend: GovernorBackend, limit: int = 3, **kw: Any) -> Governor:
    """A governor with a small JSON limit and a scaled period."""
    kw.setdefault("slow_start", False)
    return Governor(
        Limits(groups={"json_resources_entreprise": limit}, period=PERIOD, **kw), backend=backend
    )


async def call(gov: Governor, *, token: str = "fp", status: int = 200, **answer: str) -> float:
    """One sent call; returns its send time."""
    async with gov.permit(token, JSON) as permit:
        permit.sending()
        sent = anyio.current_time()
        permit.observe(status, answer)
    return sent


async def test_redis_backend_conforms(views: Any) -> None:
    """The shared conformance suite, each check on views of one Redis."""
    names = await check_backend(views, tolerance=0.05)
    assert 13 == len(names)


async def test_keys_name_no_token_carry_the_prefix_and_expire(redis_url: str) -> None:
    """Keys hold a keyed hash, never the fingerprint; all expire once idle."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with RedisBackend(client, prefix="app1", key="s3cret", idle_ttl=0.3, lease=0.5) as b:
            await call(governor(b), token="fingerprint-xyz")
            assert not [k for k in await client.keys("*") if "fingerprint-xyz" in k]
            keys = sorted(await client.keys("{app1}:*"))
            # Hash and ends (no slot open), for the token and the IP, and the epoch.
            assert 5 == len(keys), keys
            assert "{app1}:ip:shared" in keys
            for k in keys:
                if k == "{app1}:epoch":
                    assert -1 == await client.pttl(k)  # tells a live state from a lost one
                else:
                    assert 0 < await client.pttl(k) <= 1500
            async with RedisBackend(client, prefix="app1", idle_ttl=0.3, lease=0.5) as unkeyed:
                await call(governor(unkeyed), token="fingerprint-xyz")
            # Another hashing key, other names: tokens cannot be linked across deployments.
            assert len(await client.keys("{app1}:*/json_resources_entreprise")) == 2
            await anyio.sleep(1.0 + PERIOD)
            assert [] == [k for k in await client.keys("{app1}:*") if "/" in k]
    finally:
        await client.aclose()


async def test_a_429_seen_by_one_worker_pauses_the_bucket_for_all(views: Any) -> None:
    """The pause travels through Redis: other workers wait, and refuse to send if granted."""
    first, second = governor(views(), 100), governor(views(), 100)
    await call(second)  # the second worker knows the bucket
    async with second.permit("fp", JSON) as early:
        await call(first, status=429, **{"Retry-After": "0.5"})
        paused_at = anyio.current_time()
        await anyio.sleep(0.05)  # the published pause reaches the second worker
        with pytest.raises(RateLimitError) as info:
            early.sending()
        assert info.value.local
    sent = await call(second)
    # The pause runs from the answer, which came a release round trip before paused_at.
    assert sent >= paused_at + 0.5 - 0.05


async def test_a_release_in_another_worker_wakes_the_waiter_at_once(views: Any) -> None:
    """A waiter blocked by another worker's call in flight is woken by its release, no polling."""
    first, second = governor(views(), 1), governor(views(), 1)
    released = anyio.Event()
    times: dict[str, float] = {}

    async def holder() -> None:
        async with first.permit("fp", JSON):
            await anyio.sleep(0.3)  # in flight, from the second worker's point of view
            times["released"] = anyio.current_time()
        released.set()

    async def waiter() -> None:
        await anyio.sleep(0.05)
        async with second.permit("fp", JSON) as permit:
            permit.sending()
            times["granted"] = anyio.current_time()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        tg.start_soon(waiter)
    assert times["granted"] - times["released"] < 0.1
    assert second.counters.wakeups <= 3


async def test_times_come_from_redis_so_skewed_hosts_agree(views: Any) -> None:
    """A worker whose clock reads 1,000 s ahead sees the same next-free time, in its own clock."""
    here = views()
    request = [SlotRequest("fp/skew", 1)]
    grant = await here.acquire(request)
    await here.release(grant, end=anyio.current_time() + 0.5)  # type: ignore[arg-type]
    seen: list[float] = []
    make_view = views

    def skewed_host() -> None:
        class SkewedLoop(asyncio.SelectorEventLoop):
            def time(self) -> float:
                return super().time() + 1000.0

        async def look() -> None:
            async with make_view() as there:
                (ready,) = await there.ready(request)
                assert ready is not None
                # On the process timeline, which absorbs this loop's skew.
                seen.append(ready - current_time())

        anyio.run(look, backend="asyncio", backend_options={"loop_factory": SkewedLoop})

    thread = threading.Thread(target=skewed_host)
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    assert 1 == len(seen)
    assert 0.3 < seen[0] <= 0.5


async def test_fail_closed_refuses_calls_and_logs_the_choice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis unreachable, fail-closed: the call raises before anything is sent."""
    caplog.set_level(logging.INFO, logger="apientreprise_async.redis")
    async with RedisBackend(f"redis://127.0.0.1:{free_port()}", timeout=0.5) as backend:
        with pytest.raises(RedisUnavailableError, match="nothing was sent"):
            await call(governor(backend))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "calls are refused (fail closed)" in messages
    assert "refusing calls (fail_mode='closed')" in messages


async def test_fail_local_starts_from_its_own_calls_then_returns_to_redis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis killed: 1/workers of each limit locally, the calls already sent counted;
    back on Redis, the calls sent alone are written into the shared buckets."""
    caplog.set_level(logging.WARNING, logger="apientreprise_async.redis")
    server = RedisProcess().start()
    try:
        async with RedisBackend(
            server.url, fail_mode="local", workers=4, recheck=0.2, timeout=0.5
        ) as backend:
            gov = Governor(
                Limits(groups={"json_resources_entreprise": 8}, period=1.0, slow_start=False),
                backend=backend,
            )
            early = [await call(gov) for _ in range(2)]
            await anyio.to_thread.run_sync(server.stop)
            later = [await call(gov) for _ in range(2)]
            # 8 / 4 workers = 2 calls per period locally, and the two sent via Redis count.
            assert later[0] - early[0] >= gov.limits.hold - 0.01
            assert "falling back to local limits divided by 4 workers" in caplog.text
            await anyio.to_thread.run_sync(server.start)
            await anyio.sleep(0.25)
            key = "fp/json_resources_entreprise"
            await backend.ready([SlotRequest(key, 8)])  # reaches Redis again
            assert "Redis reachable again" in caplog.text
            async with RedisBackend(server.url) as other:
                await other.ready([SlotRequest(key, 8)])
                # The local calls still occupying their slots were handed to Redis.
                assert other.snapshot()[key].occupied >= 2
    finally:
        server.stop()


def test_on_trio_the_backend_says_it_needs_asyncio(redis_url: str) -> None:
    """A clear error, not a hang, on an event loop redis-py cannot use."""

    async def attempt() -> None:
        backend = RedisBackend(redis_url)
        with pytest.raises(RuntimeError, match="asyncio only"):
            await backend.acquire([SlotRequest("fp/x", 1)])

    anyio.run(attempt, backend="trio")


def test_a_missing_extra_names_the_pip_command() -> None:
    """Without redis-py, importing the module says which extra to install."""
    code = "import sys; sys.modules['redis'] = None; import apientreprise_async.redis"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert "pip install 'apientreprise_async[redis]'" in result.stderr


def test_options_are_validated() -> None:
    """Nonsense options fail early, and the reason for asyncio only is stated."""
    with pytest.raises(ValueError, match="fail_mode"):
        RedisBackend("redis://localhost", fail_mode="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        RedisBackend("redis://localhost", workers=0)
    assert "asyncio" in ASYNCIO_ONLY


async def test_a_limit_the_user_set_is_a_ceiling_in_redis(views: Any) -> None:
    """Configured 2, the server says 250: a third call in the period still waits."""
    first, second = governor(views(), 2), governor(views(), 2)
    reset = f"{time.time() + 10 * PERIOD:.6f}"
    answer = {"ratelimit-limit": "250", "ratelimit-remaining": "248", "ratelimit-reset": reset}
    await call(first, **answer)
    await call(second, **answer)
    with pytest.raises(RateLimitError) as info:
        async with first.permit("fp", JSON, max_wait=0.0):
            pass
    assert info.value.local
