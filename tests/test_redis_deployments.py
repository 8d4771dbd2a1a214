"""RedisBackend on the setups people deploy: Redis Cluster, Sentinel failover, allkeys-lru.

Each test starts the real thing on loopback ports (three cluster nodes; a
primary, a replica and a sentinel; a Redis with a tiny ``maxmemory``) and
kills it at the end.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
import redis.sentinel
from redis.asyncio.sentinel import Sentinel

from apientreprise_async.backends import Grant, SlotRequest
from apientreprise_async.redis import RedisBackend, RedisUnavailableError
from apientreprise_async.testing import check_backend

from ._redis_server import RedisProcess, binary, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> Any:
    """Asyncio only (see tests/_redis_server.ASYNCIO_ONLY)."""
    return "asyncio"


def wait_for(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- Redis Cluster ----------------------------------------------------------------------


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    """Three masters sharing the 16384 slots (``redis-cli --cluster create``)."""
    folder = tmp_path_factory.mktemp("cluster")
    nodes = []
    try:
        for _ in range(3):
            port = cluster_port()
            node = RedisProcess(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / f"nodes-{port}.conf"),
                "--dir",
                str(folder),
            )
            nodes.append(node.start())
        subprocess.run(
            [binary("redis-cli"), "--cluster", "create"]
            + [f"127.0.0.1:{n.port}" for n in nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        probe = redis.Redis(port=nodes[0].port)
        wait_for(lambda: probe.cluster("info")["cluster_state"] == "ok", "the cluster")
        probe.close()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def cluster_client(cluster: list[RedisProcess]) -> AsyncIterator[aioredis.RedisCluster]:
    client = aioredis.RedisCluster(host="127.0.0.1", port=cluster[0].port)
    try:
        yield client
    finally:
        await client.aclose()


async def views(client: Any, made: list[RedisBackend], **kw: Any) -> Any:
    prefix = f"d{os.urandom(3).hex()}"

    def make() -> RedisBackend:
        backend = RedisBackend(client, prefix=prefix, **kw)
        made.append(backend)
        return backend

    return make


async def close(made: list[RedisBackend]) -> None:
    for backend in made:
        await backend.aclose()


async def test_on_a_three_node_cluster_the_backend_conforms(
    cluster_client: aioredis.RedisCluster,
) -> None:
    """Every script's keys share one slot (the prefix is a hash tag): the suite passes."""
    made: list[RedisBackend] = []
    try:
        names = await check_backend(await views(cluster_client, made), tolerance=0.05)
        assert 13 == len(names)
        slots = {cluster_client.keyslot(name) for name in made[-1]._names.values()}
        slots.add(cluster_client.keyslot(made[-1]._epoch_key))
        assert 1 == len(slots)
    finally:
        await close(made)


async def test_on_a_cluster_a_flushed_node_is_seen_as_a_loss(
    cluster: list[RedisProcess], cluster_client: aioredis.RedisCluster
) -> None:
    """The node holding the prefix's slot forgets: the calls are written back, no third grant."""
    made: list[RedisBackend] = []
    try:
        make = await views(cluster_client, made)
        first = make()
        bucket = [SlotRequest("fp/b", 2), SlotRequest("ip", 20)]
        for _ in range(2):
            grant = await first.acquire(bucket)
            assert isinstance(grant, Grant)
            await first.release(grant, end=anyio.current_time() + 0.5)
        for node in cluster:
            async with aioredis.Redis(port=node.port) as direct:
                await direct.flushall()
        assert not isinstance(await first.acquire(bucket), Grant)
        assert 1 == first.losses
        assert not isinstance(await make().acquire(bucket), Grant)
    finally:
        await close(made)


# -- Sentinel ---------------------------------------------------------------------------


@pytest.fixture
def sentinel_setup(tmp_path: pathlib.Path) -> Iterator[tuple[RedisProcess, RedisProcess, int]]:
    """A primary, its replica and one sentinel (quorum 1, 1 s to call the primary down).

    Much less and a loaded machine fails over by itself in the middle of a check.
    """
    primary = RedisProcess().start()
    replica = RedisProcess(None, "--replicaof", "127.0.0.1", str(primary.port))
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor main 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds main 1000\n"
        "sentinel failover-timeout main 2000\n"
    )
    sentinel = subprocess.Popen(
        [binary(), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        replica.start()
        link = redis.Redis(port=replica.port)
        wait_for(lambda: link.info("replication").get("master_link_status") == "up", "replication")
        link.close()
        watcher = redis.Redis(port=sentinel_port)
        wait_for(lambda: _sentinel_knows(watcher), "the sentinel")
        watcher.close()
        yield primary, replica, sentinel_port
    finally:
        sentinel.kill()
        sentinel.wait()
        replica.stop()
        primary.stop()


def _promoted(watcher: redis.sentinel.Sentinel) -> int | None:
    try:
        return int(watcher.discover_master("main")[1])
    except (redis.ConnectionError, redis.sentinel.MasterNotFoundError):
        return None


def _sentinel_knows(watcher: redis.Redis) -> bool:
    try:
        return bool(watcher.sentinel_master("main").get("num-slaves"))
    except (redis.ConnectionError, redis.ResponseError):
        return False


async def test_through_sentinel_the_backend_conforms_before_and_after_a_failover(
    sentinel_setup: tuple[RedisProcess, RedisProcess, int],
) -> None:
    """Kill the primary: the client follows the sentinel to the promoted replica, and the
    calls sent before the failover still count there (or are written back)."""
    primary, replica, sentinel_port = sentinel_setup
    sentinel = Sentinel([("127.0.0.1", sentinel_port)], socket_timeout=0.5)
    client = sentinel.master_for("main", socket_timeout=0.5)
    made: list[RedisBackend] = []
    try:
        make = await views(client, made, timeout=0.5)
        assert 13 == len(await check_backend(make, tolerance=0.05))
        worker = make()
        bucket = [SlotRequest("fp/failover", 2)]
        for _ in range(2):
            grant = await worker.acquire(bucket)
            assert isinstance(grant, Grant)
            await worker.release(grant, end=anyio.current_time() + 30.0)
        await anyio.sleep(0.1)  # replicated
        await anyio.to_thread.run_sync(primary.stop)
        watcher = redis.sentinel.Sentinel([("127.0.0.1", sentinel_port)], socket_timeout=0.5)
        try:
            await anyio.to_thread.run_sync(
                lambda: wait_for(lambda: _promoted(watcher) == replica.port, "the failover")
            )
        finally:
            for connection in watcher.sentinels:
                connection.close()
        with anyio.fail_after(10):
            while True:
                try:
                    blocked = await worker.acquire(bucket)
                    break
                except Exception:  # refused while the sentinel elects the replica
                    await anyio.sleep(0.2)
        assert not isinstance(blocked, Grant)  # the two calls still count on the new primary
        assert not isinstance(await make().acquire(bucket), Grant)
        for attempt in range(3):
            try:
                assert 13 == len(await check_backend(make, tolerance=0.05))
                break
            except RedisUnavailableError:
                # The sentinel may still be reconfiguring the old primary's replicas.
                if attempt == 2:
                    raise
                await anyio.sleep(0.5)
    finally:
        await close(made)
        await client.aclose()
        for connection in sentinel.sentinels:
            await connection.aclose()


# -- allkeys-lru ------------------------------------------------------------------------


async def test_under_allkeys_lru_evicted_state_never_lets_a_window_overflow() -> None:
    """A Redis at its ``maxmemory`` evicts the governor's keys among others: every eviction
    reads as a loss, and no span of a hold ever holds more than the limit."""
    server = RedisProcess(None, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        async with aioredis.Redis.from_url(server.url) as filler:
            prefix = f"l{os.urandom(3).hex()}"
            limit, hold = 5, 0.3
            bucket = [SlotRequest("fp/b", limit), SlotRequest("ip", 50)]
            sends: list[float] = []
            async with RedisBackend(server.url, prefix=prefix) as backend:
                junk = os.urandom(2_000)
                start = anyio.current_time()
                n = 0
                while anyio.current_time() - start < 6 * hold:
                    # Fill memory: past 2 MB, Redis evicts the least recently used keys.
                    for _ in range(50):
                        await filler.set(f"junk:{n}", junk)
                        n += 1
                    grant = await backend.acquire(bucket)
                    if isinstance(grant, Grant):
                        sends.append(anyio.current_time())
                        await backend.release(grant, end=anyio.current_time() + hold)
                    await anyio.sleep(0.01)
            info = await filler.info("stats")
        assert info["evicted_keys"] > 0
        assert len(sends) >= limit
        for first, last in zip(sends, sends[limit:], strict=False):
            assert last - first >= hold - 0.02, "a span of one hold got more than the limit"
    finally:
        server.stop()


# -- replicas= (WAIT) -------------------------------------------------------------------


async def test_with_replicas_a_grant_no_replica_holds_is_given_back() -> None:
    """``replicas=1``: a slot is used only once a replica has it, so a failover to that
    replica cannot lose it; with the replica frozen, the grant is refused and freed."""
    primary = RedisProcess().start()
    replica = RedisProcess(None, "--replicaof", "127.0.0.1", str(primary.port))
    try:
        replica.start()
        link = redis.Redis(port=replica.port)
        await anyio.to_thread.run_sync(
            lambda: wait_for(
                lambda: link.info("replication").get("master_link_status") == "up", "replication"
            )
        )
        link.close()
        prefix = f"r{os.urandom(3).hex()}"
        bucket = [SlotRequest("fp/b", 1)]
        async with RedisBackend(primary.url, prefix=prefix, replicas=1, timeout=0.3) as durable:
            await durable.ready(bucket)  # starts the epoch before another worker listens
            plain = RedisBackend(primary.url, prefix=prefix)
            grant = await durable.acquire(bucket)
            assert isinstance(grant, Grant)
            async with aioredis.Redis(port=replica.port) as on_replica:
                assert 1 == await on_replica.zcard(durable._name("fp/b") + ":o")
            await durable.release(grant, end=None)
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(RedisUnavailableError, match="replicas acknowledged"):
                    await durable.acquire(bucket)
                # Given back: another worker finds the slot free.
                granted = await plain.acquire(bucket)
                assert isinstance(granted, Grant)
                await plain.release(granted, end=None)
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            assert isinstance(await durable.acquire(bucket), Grant)
            await plain.aclose()
    finally:
        replica.stop()
        primary.stop()


def test_replicas_is_refused_for_a_cluster_client() -> None:
    """WAIT counts one primary's replicas: a cluster client is refused at once."""
    client = aioredis.RedisCluster(host="127.0.0.1", port=free_port())
    with pytest.raises(ValueError, match="not a cluster"):
        RedisBackend(client, replicas=1)
