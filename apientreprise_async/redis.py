"""One quota for many processes and hosts: the governor's buckets in Redis.

::

    from apientreprise_async import AsyncClient, Governor
    from apientreprise_async.redis import RedisBackend

    async with RedisBackend("redis://localhost:6379/0", workers=4) as backend:
        async with AsyncClient(token, governor=Governor(backend=backend)) as client:
            ...

Every worker (uvicorn or Celery worker, cron script) builds its own
:class:`RedisBackend` on the same Redis and prefix; together they keep each
token and the shared IP under the limits, as one process would.

- Each operation is one Lua script, one round trip, atomic: the same rules as
  :class:`~apientreprise_async.backends.InMemoryBackend`, on Redis data.
- Time comes from Redis (``TIME``) and travels as deltas, converted to the
  governor's process timeline at the edge, so hosts with skewed clocks agree.
- Waiting needs no polling: a waiter sleeps until the computed next-free
  time; a release that can help a waiter of another process publishes one
  message, and that process wakes the head of the queue concerned.
- Keys name a token by a keyed hash of the governor's fingerprint, never the
  token; they expire on their own once idle. All keys of a prefix share one
  hash tag (``{prefix}``), so every script runs on one node of a Redis Cluster.

Losing the shared state
-----------------------

Redis may forget the buckets: a restart without persistence, ``FLUSHALL``,
eviction under ``maxmemory`` (``allkeys-lru``), a failover to a replica that
had not received the last writes. A governor that then trusted the empty
buckets would grant a second window's worth of calls into a window the server
already counts as full. The backend is built so that no window can hold more
than the limit whatever Redis forgets:

1. *Every process keeps its own sends.* Each backend remembers, per bucket,
   the occupancy end of every call it sent that may still count, and the calls
   it has in flight. That is at most one period of calls, and it is exactly
   what must be written back into an empty state.
2. *An epoch tells a live state from a lost one.* ``{prefix}:epoch`` holds a
   random id and a write counter (``tick``). Every script first compares them
   with what the caller last saw: a missing epoch, another id, or a counter
   gone backwards (a lagging replica promoted) means the state this process
   wrote is gone. Keys can also vanish one by one (eviction): the epoch keeps,
   per bucket, until when its state matters, and each bucket counts the
   members of its sorted sets, so a bucket missing in whole or in part is a
   loss too. Whoever sees a loss first starts a new epoch and tells the others
   on the wake-up channel; each process replays its own sends (in flight, and
   answered less than a hold ago) into the new epoch when it hears of it,
   before any grant of its own.
3. *A lost state is full for one hold.* A new epoch born of a loss grants
   nothing until a hold (the period plus the margin, as each process's sends
   show it) after its birth. Every call answered before the loss ends its
   occupancy by then, whether its process replays it or died meanwhile; the
   calls still in flight belong to live processes, which replay them first.
   So the first grant after a loss comes at a moment when every call that may
   share a window with it is recorded again: the invariant of the in-memory
   backend (never ``limit + 1`` occupancies overlapping) holds across the loss.

A replica promoted after missing writes is a consistent older state: only a
process that saw the newer writes can tell (its tick is ahead). With
``replicas=n`` no grant is used before ``n`` replicas hold it (``WAIT`` on the
connection that granted it), so a failover to one of them loses none.

A process that never saw an epoch (a new worker) cannot tell a new Redis from
an emptied one. If no other process listens on the prefix, it takes the Redis
as new; if some do, the new epoch waits half a second for them to say that
they held state, which turns it into a loss. Processes that died before a
loss and left nobody behind who remembers the epoch are the one case no
client can see: the README says so.

Redis unreachable
-----------------

``fail_mode="closed"`` (default) refuses calls with
:class:`RedisUnavailableError`. ``"local"`` falls back to this process's own
buckets, each limit divided by ``workers``, and starts them from what this
process already sent. Until a hold has passed since the switch, the others'
calls of the last period are unknown: a process then only sends in place of
its own calls that end, up to its share. After that, each process holds at
most its share, so all of them together hold at most the limit. When Redis
answers again, the process writes the calls it sent alone into the shared
state and the shared buckets grant nothing for a hold: the other workers'
local calls are not in Redis yet and may still be counted; each one writes
its own when it comes back. So no window exceeds the limit on either side of
the switch.

redis-py's asyncio client runs on asyncio only, so this backend does too; its
connections belong to one event loop, so a backend built from a URL keeps a
client (and a pool) per loop, and serves any number of threads each running
its own asyncio loop.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import weakref
from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import anyio

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "apientreprise_async.redis needs redis-py: pip install 'apientreprise_async[redis]'"
    ) from None

# Modules, not names: this module's public names are exactly its ``__all__``.
from . import _errors, _governor, _redis_lua
from ._clock import current_time as _now
from .backends import Blocked as _Blocked
from .backends import BucketState as _BucketState
from .backends import Feedback as _Feedback
from .backends import Grant as _Grant
from .backends import InMemoryBackend as _InMemoryBackend
from .backends import Learned as _Learned
from .backends import SlotRequest as _SlotRequest
from .backends import _bounded_reset, _nonsense_limit, _nonsense_pause

__all__ = ["FailMode", "RedisBackend", "RedisUnavailableError"]

_logger = logging.getLogger("apientreprise_async.redis")

FailMode = Literal["closed", "local"]

#: What "Redis cannot be reached" looks like (refused, reset, timed out, loading,
#: a cluster without a node for the slot, a Redis that refuses writes).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.OutOfMemoryError,  # maxmemory reached with nothing to evict: no writes
    OSError,
)
_INF = math.inf
_LEARNED = {"same": _Learned.SAME, "adopted": _Learned.ADOPTED, "foreign": _Learned.FOREIGN}
#: The hold assumed by a process that has not yet handed out an occupancy end:
#: the API's real period and margin.
_DEFAULT_HOLD = 60.0 * 1.005
#: Margin on the hold a process saw: its releases come a little after the answers.
_HOLD_SLACK = 1.02


class RedisUnavailableError(_errors.ApiEntrepriseError):
    """Redis could not be reached and the backend fails closed: nothing was sent.

    .. versionadded:: 0.1.0
    """


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Held:
    """A grant of this process not released yet.

    ``seqs``: its members in Redis' open sets (``None`` if granted locally and
    not written to Redis since); ``local``: the grant of the local backend, or
    ``None``; ``mirrored``: the local generation its slots were counted in.
    """

    __slots__ = ("grant", "local", "mirrored", "seqs")

    def __init__(
        self, grant: _Grant, seqs: tuple[str, ...] | None, local: _Grant | None = None
    ) -> None:
        self.grant = grant
        self.seqs = seqs
        self.local = local
        self.mirrored = -1


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    """The running asyncio loop; anything else is refused in words."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        message = "RedisBackend runs on asyncio only (redis-py's asyncio client)"
        raise RuntimeError(message) from None


class RedisBackend:
    """A :class:`~apientreprise_async.backends.GovernorBackend` shared through Redis.

    Args:
        redis: a ``redis://`` URL, or a client: ``redis.asyncio.Redis`` (also
            one from ``Sentinel.master_for``, which follows failovers) or
            ``redis.asyncio.RedisCluster``; a client given is left open by
            :meth:`aclose`. It should use a ``BlockingConnectionPool`` (as one
            built from a URL does), or a pool larger than the calls in flight
            at once: a full default pool raises, which reads as Redis being
            unreachable.
        prefix: the start of every key and of the wake-up channel; give each
            application its own. Keys use it as a hash tag (``{prefix}``), so a
            prefix with braces of its own is taken as is.
        fail_mode: ``"closed"``: raise :class:`RedisUnavailableError` when Redis
            cannot be reached; ``"local"``: fall back to limits of this process,
            each divided by ``workers``.
        workers: how many processes share the quota (used only in ``"local"`` mode).
        key: secret for the keyed hash naming tokens in Redis keys (every
            worker must use the same); a fixed public key when ``None``, which
            still never reveals the token.
        ip_scope: name of the IP bucket; processes behind one outgoing IP share
            one scope, hosts with IPs of their own each need their own.
        lease: longest time a granted call may stay unanswered; the slot of a
            worker that died in between frees itself then.
        idle_ttl: how long keys outlive their last meaningful time.
        recheck: in ``"local"`` mode, seconds between attempts to reach Redis again;
            also a last resort for a waiter blocked by another process's call in
            flight: it looks again after that long should a wake-up message be
            lost (pub/sub delivers at most once, e.g. across a reconnection).
        timeout: socket timeout of the client built from a URL.
        replicas: after each grant, wait (``WAIT``, at most half of ``timeout``) until
            this many replicas hold it, else give the slot back and take Redis
            as unreachable. With Sentinel or a managed failover, a replica then
            promoted has every grant any worker used; ``0`` (default) does not
            wait. Not for Redis Cluster clients.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        redis: str | aioredis.Redis | aioredis.RedisCluster,
        /,
        *,
        prefix: str = "apientreprise_async",
        fail_mode: FailMode = "closed",
        workers: int = 1,
        key: bytes | str | None = None,
        ip_scope: str = "shared",
        lease: float = 300.0,
        idle_ttl: float = 3600.0,
        recheck: float = 5.0,
        timeout: float = 2.0,
        replicas: int = 0,
    ) -> None:
        if fail_mode not in ("closed", "local"):
            raise ValueError(f"fail_mode must be 'closed' or 'local', got {fail_mode!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        if not lease > 0 or idle_ttl < 0 or not recheck > 0:
            raise ValueError("lease and recheck must be positive, idle_ttl not negative")
        if replicas < 0:
            raise ValueError(f"replicas must not be negative, got {replicas!r}")
        if replicas and isinstance(redis, aioredis.RedisCluster):
            raise ValueError("replicas= needs one primary (Redis or Sentinel), not a cluster")
        self._replicas = replicas
        self._wait_ms = max(1, int(timeout * 500))  # half the socket timeout: WAIT answers first
        self._make: Callable[[], Any] | None = None
        self._given: Any = None
        if isinstance(redis, str):
            url = redis

            def make() -> aioredis.Redis:
                # A blocking pool: past its size, a call waits for a connection. redis-py's
                # default pool raises instead (MaxConnectionsError, a ConnectionError),
                # which would pass for Redis being down. One retry, at once: a restarted
                # server is reached on a fresh connection, a dead one fails fast.
                pool = aioredis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=100,
                    timeout=None,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 1),
                )
                return aioredis.Redis(connection_pool=pool)

            self._make = make
            self._owns = True
        else:
            self._given = redis
            self._owns = False
        # redis-py's connections belong to the loop that opened them: one client per loop.
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]
        ] = weakref.WeakKeyDictionary()
        self.prefix = prefix
        self.fail_mode: FailMode = fail_mode
        self.workers = workers
        self._hash_key = (key.encode() if isinstance(key, str) else key) or b"apientreprise_async"
        tag = prefix if "{" in prefix else f"{{{prefix}}}"
        self._tag = tag
        self._ip_name = f"{tag}:ip:{ip_scope}"
        self._epoch_key = f"{tag}:epoch"
        self._channel = f"{tag}:wake"
        self._origin = os.urandom(6).hex()
        self._lease = (repr(float(lease)), repr(float(idle_ttl)), self._channel, self._origin)
        self._recheck = recheck
        self._names: dict[str, str] = {}  # governor key -> Redis key
        self._keys: dict[str, str] = {}  # Redis key -> governor key
        self._states: dict[str, _BucketState] = {}
        self._paused: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # pauses not yet written to Redis
        # What survives a loss of the shared state (see the module's docstring).
        self._epoch = ""
        self._tick = 0
        self._hold_seen = 0.0
        self._held: dict[int, _Held] = {}
        self._journal: dict[str, tuple[_SlotRequest, list[float]]] = {}
        self._epoch_lock: asyncio.Lock | None = None
        self._listening = False
        self._subscribed: asyncio.Event | None = None  # set once the listener first subscribed
        # Local mode.
        self._local = _InMemoryBackend()
        self._generation = 0
        self._switched = -_INF
        self._outage: dict[str, tuple[_SlotRequest, list[float]]] = {}
        self._unreleased: list[tuple[_Held, float | None, str]] = []
        self._down = False
        self._retry_at = -_INF
        # Wake-ups.
        self._woken: dict[str, int] = {}  # governor key -> wake-ups delivered so far
        self._listener: asyncio.Task[None] | None = None
        self._alarm: asyncio.TimerHandle | None = None
        self._alarm_loop: asyncio.AbstractEventLoop | None = None
        self._alarm_at = _INF
        self._closed = False
        self.losses = 0
        """State losses this process saw (new epochs it replayed its sends into)."""
        _logger.info(
            "Redis governor backend, prefix %r: if Redis is unreachable, %s",
            prefix,
            "calls are refused (fail closed)"
            if fail_mode == "closed"
            else f"each process keeps 1/{workers} of every limit locally",
        )

    def __repr__(self) -> str:
        mode = "local" if self._down else "redis"
        return (
            f"<RedisBackend prefix={self.prefix!r} mode={mode} fail_mode={self.fail_mode} "
            f"buckets={len(self._states)}>"
        )

    # -- lifecycle ------------------------------------------------------------------------

    def _here(self) -> tuple[Any, dict[str, Any]]:
        """The running loop's client and its registered scripts."""
        loop = _asyncio_loop()
        found = self._per_loop.get(loop)
        if found is None:
            if self._make is not None:
                client = self._make()
            elif any(not other.is_closed() for other in self._per_loop):
                raise RuntimeError(
                    "the redis client given to RedisBackend belongs to another event loop; "
                    "pass a URL to use the backend from several loops or threads"
                )
            else:
                assert self._given is not None
                client = self._given
            scripts = {
                name: client.register_script(getattr(_redis_lua, name))
                for name in ("ACQUIRE", "RELEASE", "SEED", "PAUSE", "ESTIMATE", "REPLAY", "CHECK")
            }
            self._per_loop[loop] = (client, scripts)
            return client, scripts
        client, scripts = found
        return client, scripts

    @property
    def _redis(self) -> Any:
        return self._here()[0]

    @property
    def _scripts(self) -> dict[str, Any]:
        return self._here()[1]

    async def __aenter__(self) -> RedisBackend:
        self._ensure_listener()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening for wake-ups; close the client if it was built from a URL."""
        if self._closed:
            return
        self._closed = True
        if self._alarm is not None and self._alarm_loop is asyncio.get_running_loop():
            self._alarm.cancel()
        self._alarm = None
        task, self._listener = self._listener, None
        while task is not None and not task.done():
            # redis-py can swallow a cancellation that lands while it connects: insist.
            task.cancel()
            await asyncio.wait([task], timeout=0.1)
        if task is not None and not task.cancelled() and task.exception() is not None:
            _logger.error("the wake-up listener had failed", exc_info=task.exception())
        if self._owns:
            here = asyncio.get_running_loop()
            for loop, (client, _) in list(self._per_loop.items()):
                closing = client.aclose(close_connection_pool=True)
                if loop is here:
                    await closing
                elif loop.is_closed():
                    closing.close()  # its connections died with their loop
                else:
                    asyncio.run_coroutine_threadsafe(closing, loop)

    def _ensure_listener(self) -> None:
        if self._closed:
            raise RuntimeError("this RedisBackend is closed")
        task = self._listener
        if task is not None and not task.done() and not task.get_loop().is_closed():
            return  # one listener per process, on whichever loop started it
        loop = _asyncio_loop()
        self._listener = loop.create_task(self._listen(), name=f"{self._channel} listener")

    async def _listen(self) -> None:
        """Receive wake-ups, pauses and new epochs published by other processes."""
        failing = False
        while not self._closed:
            if isinstance(self._redis, aioredis.RedisCluster):
                try:
                    # Its pub/sub needs the slot map that the first command would load.
                    await self._redis.initialize()
                except _UNREACHABLE as exc:
                    _logger.warning("Redis Cluster unreachable (%s); retrying", exc)
                    await anyio.sleep(min(self._recheck, 1.0))
                    continue
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._listening = True
                        failing = False
                        if self._subscribed is not None:
                            self._subscribed.set()
                        # Anything published before now was missed: every head looks
                        # again, and the epoch is checked (the server may be another).
                        self._wake_all()
                        await self._check_epoch()
                    elif message["type"] == "message":
                        data = _text(message["data"])
                        if self._on_message(data):
                            await self._check_epoch()
            except _UNREACHABLE as exc:
                # Once per outage: a Redis down for an hour would log every second.
                log = _logger.debug if failing else _logger.warning
                log("Redis wake-up channel lost (%s); resubscribing", exc)
                failing = True
                await anyio.sleep(min(self._recheck, 1.0))
            finally:
                self._listening = False
                # Plain await: the task is cancelled natively (aclose), once; an anyio
                # shield here would swallow that cancellation and loop forever.
                await pubsub.aclose()

    async def _check_epoch(self) -> None:
        """Compare epochs now (and replay on a loss), unless Redis is known down."""
        if not self._epoch or self._use_local():
            return
        try:
            await self._run("CHECK", (), list)
        except _UNREACHABLE as exc:
            _logger.debug("epoch check failed: %s", exc)
        except redis_errors.RedisError as exc:  # the listener must live on
            _logger.warning("epoch check failed: %s", exc)

    def _on_message(self, data: str) -> bool:
        """Act on one message; true when it announces an epoch this process lacks."""
        origin, kind, name, *rest = data.split(" ")
        if origin == self._origin:
            return False  # release() woke this process's waiters from the script's reply
        if kind == "e":
            return name != self._epoch
        key = self._keys.get(name)
        if key is None:
            return False
        if kind == "w":
            self._wake(key)
        elif kind == "p" and rest:
            until = _now() + float(rest[0])
            if until > self._paused.get(key, -_INF):
                self._paused[key] = until
        return False

    def _wake(self, key: str) -> None:
        """A release may help ``key``'s waiters: wake its heads, and count it.

        The count catches a wake-up that lands while a waiter's own script is on
        its way back (see :meth:`_raced`): that waiter is in no queue to wake yet
        (the IP queue is joined after the reply) or acts on a reply already stale.
        """
        self._woken[key] = self._woken.get(key, 0) + 1
        _governor.wake_waiters(self, key)

    def _wake_all(self) -> None:
        for key in list(self._keys.values()):
            self._wake(key)

    def _raced(
        self, requests: Sequence[_SlotRequest], ready: Sequence[float | None], seen: list[int]
    ) -> list[bool]:
        """Per request: a script found it waiting for a release, and a wake-up for
        its bucket arrived during the round trip (``seen``: the counts before), so
        the reply may already be stale.
        """
        woken = self._woken
        return [
            when is None and woken.get(r.key, 0) != before
            for r, when, before in zip(requests, ready, seen, strict=True)
        ]

    def _blocked_ready(
        self, requests: Sequence[_SlotRequest], reply: Sequence[Any], seen: list[int], last: bool
    ) -> tuple[float | None, ...] | None:
        """The ready times of a blocked reply; ``None``: raced by a wake-up, ask again.

        On a second race in a row, a raced bucket reads "now" (look again at once)
        rather than "after a release", which may have come and gone.
        """
        base = _now()
        ready = [
            self._mirror(r.key, reply[1 + 9 * i : 10 + 9 * i], base) for i, r in enumerate(requests)
        ]
        raced = self._raced(requests, ready, seen)
        if not any(raced):
            return tuple(ready)
        if not last:
            return None
        return tuple(base if r else when for when, r in zip(ready, raced, strict=True))

    def _set_alarm(self, when: float) -> None:
        """Wake every head at ``when`` (one timer per backend, the earliest wins)."""
        loop = asyncio.get_running_loop()
        alarm_loop = self._alarm_loop
        mine = alarm_loop is loop
        if when >= self._alarm_at and (mine or (alarm_loop and alarm_loop.is_running())):
            return
        if self._alarm is not None and mine:
            self._alarm.cancel()  # another loop's timer is left to ring: harmless, and safe
        self._alarm_at = when
        self._alarm_loop = loop
        self._alarm = loop.call_later(max(when - _now(), 0.0), self._ring)

    def _ring(self) -> None:
        self._alarm = None
        self._alarm_at = _INF
        self._wake_all()

    # -- names and conversions ------------------------------------------------------------

    def _name(self, key: str) -> str:
        """The Redis key of a bucket: the token part hashed again with ``key``."""
        name = self._names.get(key)
        if name is None:
            if key == _governor.IP_KEY:
                name = self._ip_name
            else:
                token, sep, rest = key.partition("/")
                digest = hmac.new(self._hash_key, token.encode(), hashlib.sha256).hexdigest()[:24]
                name = f"{self._tag}:{digest}{sep}{rest}"
            self._names[key] = name
            self._keys[name] = key
        return name

    def _keys_of(self, requests: Sequence[_SlotRequest]) -> list[str]:
        keys = [self._epoch_key]
        for request in requests:
            name = self._name(request.key)
            keys += (name, f"{name}:o", f"{name}:e")
        return keys

    @staticmethod
    def _request_args(request: _SlotRequest) -> tuple[str, str, str]:
        return (str(request.limit), request.op or "", "1" if request.probe else "0")

    def _note_hold(self, hold: float) -> None:
        """A governor on this backend holds each sent call's slot ``hold`` after its answer."""
        self._hold_seen = max(self._hold_seen, hold / _HOLD_SLACK)

    def _hold(self) -> float:
        """The longest occupancy any process may have handed out (see the docstring)."""
        if self._hold_seen > 0:
            return self._hold_seen * _HOLD_SLACK
        return _DEFAULT_HOLD

    def _common(self) -> list[str]:
        return [
            *self._lease,
            self._epoch,
            str(self._tick),
            repr(self._hold()),
            os.urandom(8).hex(),
            "1" if self._listening else "0",
        ]

    def _mirror(
        self, key: str, fields: Sequence[Any], base: float, granted: bool = False
    ) -> float | None:
        """Record one bucket's state from a script's reply; return its ready time.

        ``granted``: Redis just granted a slot, so no pause it knows of is in
        force; a pause heard of by message (its end read late by the delivery
        time) then gives way, unless this process set one not written yet.
        """
        ready_s, limit, confirmed, open_, ends, cap_left, cap_s, paused_s, lease_s = map(
            _text, fields
        )
        ready = None if ready_s == "n" else base + float(ready_s)
        paused = base + float(paused_s) if paused_s else -_INF
        if paused > self._paused.get(key, -_INF) or (granted and key not in self._pending):
            self._paused[key] = paused
        capped = bool(cap_s)
        self._states[key] = _BucketState(
            key=key,
            limit=int(limit),
            confirmed=confirmed == "1",
            open=int(open_),
            occupied=int(open_) + int(ends),
            next_free=ready,
            paused_until=self._paused.get(key, -_INF),
            cap_remaining=int(cap_left) if capped else None,
            cap_until=base + float(cap_s) if capped else -_INF,
        )
        if ready is None:
            # Pub/sub delivers at most once: should a wake-up be lost, look again after
            # ``recheck`` at the latest (and when the first open lease ends).
            when = base + self._recheck
            if lease_s:
                when = min(when, base + float(lease_s))
            self._set_alarm(when)
        return ready

    # -- scripts and epochs ---------------------------------------------------------------

    async def _run(
        self,
        name: str,
        requests: Sequence[_SlotRequest],
        build: Callable[[], list[str]],
    ) -> list[Any]:
        """Run a script in the current epoch; return its reply without the tick.

        ``build`` makes the script's own arguments, again after a replay (a
        grant's sequence numbers change when it is written into a new epoch).
        """
        await self._flush()
        if self._down:
            await self._come_back()
        return await self._eval(name, requests, build)

    async def _eval(
        self, name: str, requests: Sequence[_SlotRequest], build: Callable[[], list[str]]
    ) -> list[Any]:
        script = self._scripts[name]
        keys = self._keys_of(requests)
        durable = self._replicas and name == "ACQUIRE"
        for _ in range(5):
            args = [*self._common(), *build()]
            if durable:
                reply = await self._durable(script, keys, args, requests)
            else:
                reply = await script(keys=keys, args=args)
            if _text(reply[0]) == "E":
                await self._adopt(_text(reply[1]))
                continue
            self._tick = max(self._tick, int(reply[0]))
            return list(reply[1:])
        raise redis_errors.ConnectionError("the governor's epoch in Redis keeps changing")

    async def _durable(
        self, script: Any, keys: list[str], args: list[str], requests: Sequence[_SlotRequest]
    ) -> Any:
        """ACQUIRE, then ``WAIT`` on the same connection: a grant no replica holds
        yet is given back, and Redis reads as unreachable."""
        async with self._redis.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.wait(self._replicas, self._wait_ms)
            reply, acked = await pipe.execute()
        if _text(reply[0]) == "E" or _text(reply[1]) != "g" or acked >= self._replicas:
            return reply
        release = ["", "", "", "", "", "", str(len(requests))]
        for i, request in enumerate(requests):
            at = 2 + 12 * i
            mark, seq, probing = _text(reply[at]), _text(reply[at + 1]), _text(reply[at + 2])
            release += [*self._request_args(request), seq, mark, probing]
        await self._scripts["RELEASE"](keys=keys, args=[*self._common(), *release])
        raise redis_errors.ConnectionError(
            f"{acked} of {self._replicas} replicas acknowledged the grant within "
            f"{self._wait_ms} ms; slot given back"
        )

    def _lock(self) -> asyncio.Lock:
        if self._epoch_lock is None:
            self._epoch_lock = asyncio.Lock()
        return self._epoch_lock

    async def _adopt(self, epoch: str) -> None:
        """Redis is in another epoch than ours: write our sends into it, then use it."""
        async with self._lock():
            if epoch == self._epoch:
                return  # another task of this process adopted it meanwhile
            lost = bool(self._epoch)
            self._epoch, self._tick = epoch, 0
            if lost:
                self._lost()
            if self._journal or self._held:
                await self._replay("l" if lost else "", everything=True)

    def _lost(self) -> None:
        """Count and log a loss of the shared state; pauses we know outlive it."""
        self.losses += 1
        _logger.warning(
            "the governor's state in Redis was lost (restart without persistence, flush, "
            "eviction or failover): writing back the calls of this process that may still "
            "count; no grant before a hold (%.3f s) has passed since the loss",
            self._hold(),
        )
        now = _now()
        for key, until in self._paused.items():
            if until > now:
                self._pending[key] = max(until, self._pending.get(key, -_INF))

    async def _replay(self, why: str, *, everything: bool) -> int:
        """Write our live sends (``everything``) or those of the outage into the epoch.

        Returns how many calls it wrote. Runs under the epoch lock; should Redis
        be in yet another epoch, writes everything there.
        """
        script = self._scripts["REPLAY"]
        for _ in range(5):
            now = _now()
            source = self._journal if everything else self._outage
            buckets: dict[str, tuple[_SlotRequest, list[_Held], list[float]]] = {}
            for key, (request, ends) in source.items():
                live = [end for end in ends if end > now]
                if live:
                    buckets[key] = (request, [], live)
            for held in self._held.values():
                if everything or held.seqs is None:
                    for request in held.grant.requests:
                        buckets.setdefault(request.key, (request, [], []))[1].append(held)
            requests = [request for request, _, _ in buckets.values()]
            args = [why, f"r:{os.urandom(4).hex()}:", str(len(requests))]
            for request, flying, ends in buckets.values():
                args += [*self._request_args(request), str(len(flying)), str(len(ends))]
                args += [repr(end - now) for end in ends]
            reply = await script(keys=self._keys_of(requests), args=[*self._common(), *args])
            if _text(reply[0]) != "E":
                break
            lost = bool(self._epoch)
            self._epoch, self._tick = _text(reply[1]), 0
            everything = True
            if lost:
                self._lost()
                if why != "r":
                    why = "l"
        else:
            raise redis_errors.ConnectionError("the governor's epoch in Redis keeps changing")
        self._tick = max(self._tick, int(reply[0]))
        # New sequence numbers for the calls in flight, bucket by bucket.
        seqs = iter(_text(seq) for seq in reply[1:])
        for key, (_, flying, _) in buckets.items():
            for held in flying:
                index = [r.key for r in held.grant.requests].index(key)
                current = list(held.seqs or ("",) * len(held.grant.requests))
                current[index] = next(seqs)
                held.seqs = tuple(current)
        if not everything:
            self._outage = {}
        return sum(len(ends) for _, _, ends in buckets.values()) + len(
            {id(h) for _, flying, _ in buckets.values() for h in flying}
        )

    # -- failure handling -----------------------------------------------------------------

    def _use_local(self) -> bool:
        return self._down and _now() < self._retry_at

    def _unreachable(self, exc: BaseException, *, refuse: bool) -> None:
        """Redis failed: raise (fail closed) or switch to local limits."""
        if self.fail_mode == "closed":
            if not self._down:
                _logger.error("Redis unreachable (%s): refusing calls (fail_mode='closed')", exc)
            self._down = True
            if refuse:
                raise RedisUnavailableError(
                    f"the governor's Redis is unreachable ({exc}); nothing was sent"
                ) from exc
            return
        if not self._down:
            _logger.warning(
                "Redis unreachable (%s): falling back to local limits divided by %d workers "
                "(fail_mode='local'), starting from this process's own calls; retrying "
                "every %g s",
                exc,
                self.workers,
                self._recheck,
            )
            self._down = True
            self._go_local()
        self._retry_at = _now() + self._recheck

    def _go_local(self) -> None:
        """Start local buckets from this process's sends and calls in flight."""
        self._generation += 1
        self._local = _InMemoryBackend()
        self._switched = _now()
        self._outage = {}
        for request, _ in self._journal.values():
            self._local_bucket(request)
        for held in self._held.values():
            for request in held.grant.requests:
                self._local_bucket(request)

    def _share(self, request: _SlotRequest) -> int:
        state = self._states.get(request.key)
        limit = state.limit if state is not None and state.confirmed else request.limit
        return max(1, limit // self.workers)

    def _divided(self, request: _SlotRequest) -> _SlotRequest:
        return request._replace(limit=self._share(request))

    def _local_bucket(self, request: _SlotRequest) -> None:
        """Create ``request``'s local bucket if new: this process's own sends and
        calls in flight, and until a hold after the switch, room for the others'.

        The others' calls of the last period are unknown: this process may only
        send in place of its own ones that end, and not beyond its share.
        """
        local = self._local
        if request.key in local._buckets:
            return
        share = self._share(request)
        bucket = local._bucket(self._divided(request))
        now = _now()
        own = self._journal.get(request.key)
        if own is not None:
            bucket.ends.extend(sorted(end for end in own[1] if end > now))
        for held in self._held.values():
            # Calls in flight granted by Redis (or by an earlier local spell).
            if held.mirrored != self._generation and any(
                r.key == request.key for r in held.grant.requests
            ):
                bucket.open += 1
        until = self._switched + self._hold()
        if until > now:
            for _ in range(max(0, share - bucket.open - len(bucket.ends))):
                insort(bucket.ends, until)

    def _local_release(self, held: _Held, end: float | None) -> None:
        """A Redis grant counted in the local buckets frees its local slots."""
        for request in held.grant.requests:
            bucket = self._local._buckets.get(request.key)
            if bucket is None or bucket.open <= 0:
                continue
            bucket.open -= 1
            if end is not None:
                insort(bucket.ends, end)

    async def _come_back(self) -> None:
        """Redis answers again: write what this process sent alone, hold the rest a while."""
        if self.fail_mode == "closed":
            self._down = False
            _logger.warning("Redis reachable again: calls are accepted again")
            return
        async with self._lock():
            if not self._down:
                return
            calls = await self._replay("r", everything=False)
            self._down = False
            unreleased, self._unreleased = self._unreleased, []
        _logger.warning(
            "Redis reachable again: the shared buckets are back in use; wrote the %d calls "
            "this process sent alone; no shared grant for a hold (%.3f s), until every "
            "worker has written its own",
            calls,
            self._hold(),
        )
        for held, end, epoch in unreleased:
            # In another epoch its members mean nothing; the replay wrote its end.
            if held.seqs is not None and epoch == self._epoch:
                try:
                    await self._release_in_redis(held, end, None)
                except _UNREACHABLE:
                    break  # their lease frees them

    async def _flush(self) -> None:
        """Write pauses recorded synchronously by :meth:`pause`, and make sure we listen."""
        self._ensure_listener()
        if self._subscribed is None:
            # Listen before the first script: an epoch born then counts the other
            # processes listening, and must not count this one among them.
            self._subscribed = asyncio.Event()
            with anyio.move_on_after(1.0):
                await self._subscribed.wait()
        if not self._pending or self._down:
            return
        pending, self._pending = self._pending, {}
        now = _now()
        try:
            for key, until in pending.items():
                await self._eval(
                    "PAUSE",
                    [_SlotRequest(key, 1)],
                    lambda until=until: [repr(until - _now())],  # type: ignore[misc]
                )
        except BaseException:
            for key, until in pending.items():
                if until > now:
                    self._pending[key] = max(until, self._pending.get(key, -_INF))
            raise

    def _record(self, grant: _Grant, end: float | None, *, outage: bool) -> None:
        """Keep a sent call's end in the journal (and the outage's) while it may count."""
        if end is None:
            return
        now = _now()
        if end - now > self._hold_seen:
            self._hold_seen = end - now
        for journal in (self._journal, self._outage) if self._down and outage else (self._journal,):
            for request in grant.requests:
                entry = journal.get(request.key)
                if entry is None:
                    journal[request.key] = (request, [end])
                    continue
                ends = entry[1]
                if ends and ends[0] <= now and len(ends) > 8:
                    ends[:] = [e for e in ends if e > now]
                ends.append(end)

    # -- the protocol ---------------------------------------------------------------------

    async def _local_acquire(self, requests: Sequence[_SlotRequest]) -> _Grant | _Blocked:
        now = _now()
        for request in requests:
            self._local_bucket(request)
            # A pause heard of from another process holds locally too: else the grant
            # would be refused by Permit.sending() instead of waiting for the pause's end.
            until = self._paused.get(request.key, -_INF)
            if until > now:
                self._local.pause(request.key, until)
        divided = [self._divided(r) for r in requests]
        result = await self._local.acquire(divided)
        if type(result) is _Grant:
            # The governor keeps the undivided requests; the local grant stays inside.
            grant = _Grant(tuple(requests), result.probing, result.marks)
            held = _Held(grant, None, result)
            held.mirrored = self._generation
            self._held[id(grant)] = held
            return grant
        return result

    async def acquire(self, requests: Sequence[_SlotRequest]) -> _Grant | _Blocked:
        """Take one slot in every bucket of ``requests`` if all are free now, else none."""
        if self._use_local():
            return await self._local_acquire(requests)
        args = ["a", str(len(requests))]
        for request in requests:
            args += self._request_args(request)
        for last in (False, True):
            seen = [self._woken.get(r.key, 0) for r in requests]
            try:
                reply = await self._run("ACQUIRE", requests, lambda: args)
            except _UNREACHABLE as exc:
                self._unreachable(exc, refuse=True)
                return await self._local_acquire(requests)
            if _text(reply[0]) != "b":
                break
            ready = self._blocked_ready(requests, reply, seen, last)
            if ready is not None:
                return _Blocked(ready)
        base = _now()
        marks, seqs, probing = [], [], []
        for i, request in enumerate(requests):
            at = 1 + 12 * i
            marks.append(int(reply[at]))
            seqs.append(_text(reply[at + 1]))
            probing.append(_text(reply[at + 2]) == "1")
            self._mirror(request.key, reply[at + 3 : at + 12], base, granted=True)
        grant = _Grant(tuple(requests), tuple(probing), tuple(marks))
        self._held[id(grant)] = _Held(grant, tuple(seqs))
        return grant

    async def ready(self, requests: Sequence[_SlotRequest]) -> tuple[float | None, ...]:
        """Earliest grant time per request, without taking anything."""
        args = ["r", str(len(requests))]
        for request in requests:
            args += self._request_args(request)
        for last in (False, True):
            if self._use_local():
                break
            seen = [self._woken.get(r.key, 0) for r in requests]
            try:
                reply = await self._run("ACQUIRE", requests, lambda: args)
            except _UNREACHABLE as exc:
                # Never raise here: the caller may hold a fresh grant. Failing closed, the
                # head wakes now and its own acquire raises.
                self._unreachable(exc, refuse=False)
                if self.fail_mode == "closed":
                    return (_now(),) * len(requests)
                break
            ready = self._blocked_ready(requests, reply, seen, last)
            if ready is not None:
                return ready
        for request in requests:
            self._local_bucket(request)
        return await self._local.ready([self._divided(r) for r in requests])

    async def release(
        self, grant: _Grant, *, end: float | None, feedback: _Feedback | None = None
    ) -> _Learned | None:
        """Give the slots of ``grant`` back (see the protocol); never raises for Redis."""
        held = self._held.get(id(grant))
        if held is None:
            raise KeyError("this grant is not one of this backend's, or was released already")
        now = _now()
        if feedback is not None:
            key = grant.requests[0].key
            if _nonsense_limit(feedback.limit):
                self.pause(key, _nonsense_pause(key, feedback, now))
                feedback = None
            else:
                feedback = _bounded_reset(key, feedback, now)
        learned: _Learned | None = None
        if held.mirrored == self._generation and held.local is not None:
            local_feedback = None
            if feedback is not None:
                local_feedback = feedback._replace(
                    limit=max(1, feedback.limit // self.workers),
                    remaining=feedback.remaining // self.workers,
                )
            learned = await self._local.release(held.local, end=end, feedback=local_feedback)
        elif self._down:
            self._local_release(held, end)  # counted in flight when the local buckets began
        try:
            if held.seqs is None:
                pass  # granted locally and never written to Redis: the outage replay will
            elif self._use_local():
                self._unreleased.append((held, end, self._epoch))
            else:
                try:
                    redis_learned = await self._release_in_redis(held, end, feedback)
                except _UNREACHABLE as exc:
                    # The slots stay open in Redis until written back or their lease ends.
                    _logger.warning("Redis unreachable at release (%s): the slots free later", exc)
                    self._unreachable(exc, refuse=False)
                    if self.fail_mode == "local":
                        self._unreleased.append((held, end, self._epoch))
                else:
                    if held.local is None:
                        learned = redis_learned
        finally:
            self._held.pop(id(grant), None)
            # A Redis grant's end goes to Redis with its release, not with the outage's.
            self._record(grant, end, outage=held.seqs is None)
        return learned

    async def _release_in_redis(
        self, held: _Held, end: float | None, feedback: _Feedback | None
    ) -> _Learned | None:
        grant = held.grant

        def build() -> list[str]:
            now = _now()
            args = ["" if end is None else repr(end - now)]
            if feedback is None:
                args += ["", "", "", "", ""]
            else:
                opened, counted = feedback.opened_at, feedback.counted_from
                args += [
                    str(feedback.limit),
                    str(feedback.remaining),
                    repr(feedback.reset_at - now),
                    "" if opened == -_INF else repr(opened - now),
                    "" if counted == _INF else repr(counted - now),
                ]
            args.append(str(len(grant.requests)))
            assert held.seqs is not None
            for request, seq, mark, probing in zip(
                grant.requests, held.seqs, grant.marks, grant.probing, strict=True
            ):
                args += (*self._request_args(request), seq, str(mark), "1" if probing else "0")
            first = grant.requests[0]
            args.append(str(first.limit) if first.ceiling else "")
            return args

        reply = await self._run("RELEASE", grant.requests, build)
        for request, woke in zip(grant.requests, reply[1:], strict=True):
            if _text(woke) == "1":
                # Its message is ignored here: wake this process's waiters now. The
                # governor wakes only a head already asleep; the flag may come from a
                # head whose acquire is still on its way back.
                self._wake(request.key)
        return _LEARNED.get(_text(reply[0]))

    async def seed(self, request: _SlotRequest, feedback: _Feedback) -> None:
        """Create (or correct) a bucket whose real limit is already known."""
        now = _now()
        if _nonsense_limit(feedback.limit):
            self.pause(request.key, _nonsense_pause(request.key, feedback, now))
            return
        feedback = _bounded_reset(request.key, feedback, now)
        if not self._use_local():

            def build() -> list[str]:
                return [
                    *self._request_args(request),
                    str(feedback.limit),
                    str(feedback.remaining),
                    repr(feedback.reset_at - _now()),
                ]

            try:
                await self._run("SEED", [request], build)
                return
            except _UNREACHABLE as exc:
                self._unreachable(exc, refuse=False)
        self._local_bucket(request)
        await self._local.seed(
            self._divided(request),
            feedback._replace(
                limit=max(1, feedback.limit // self.workers),
                remaining=feedback.remaining // self.workers,
            ),
        )

    def pause(self, key: str, until: float) -> None:
        """Grant nothing in ``key`` before ``until``, here at once, elsewhere on the next call."""
        if until > self._paused.get(key, -_INF):
            self._paused[key] = until
        self._pending[key] = max(until, self._pending.get(key, -_INF))
        self._local.pause(key, until)

    def paused_until(self, key: str) -> float:
        """End of ``key``'s pause as last seen (``-inf`` when none)."""
        return self._paused.get(key, -_INF)

    async def estimate(self, request: _SlotRequest, position: int, hold: float) -> float:
        """When a call with ``position`` calls ahead would get a slot (a lower bound)."""
        if not self._use_local():
            args = [*self._request_args(request), str(position), repr(hold)]
            try:
                reply = await self._run("ESTIMATE", [request], lambda: args)
                return _now() + float(_text(reply[0]))
            except _UNREACHABLE as exc:
                self._unreachable(exc, refuse=True)
        self._local_bucket(request)
        return await self._local.estimate(self._divided(request), position, hold)

    def snapshot(self) -> Mapping[str, _BucketState]:
        """What this process last heard of every bucket (each script reply updates it)."""
        if self._down:
            return {**self._states, **self._local.snapshot()}
        return dict(self._states)
