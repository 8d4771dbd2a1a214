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
- Time comes from Redis (``TIME``) and travels as deltas, converted to each
  caller's anyio clock at the edge, so hosts with skewed clocks agree.
- Waiting needs no polling: a waiter sleeps until the computed next-free
  time; a release that can help a waiter of another process publishes one
  message, and that process wakes the head of the queue concerned.
- Keys name a token by a keyed hash of the governor's fingerprint, never the
  token; they expire on their own once idle.
- Redis unreachable: ``fail_mode="closed"`` (default) refuses calls with
  :class:`RedisUnavailableError`; ``"local"`` falls back to this process's own
  buckets with every limit divided by ``workers``, and comes back to Redis
  once it answers again.

redis-py's asyncio client runs on asyncio only, so this backend does too.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import anyio

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
except ImportError:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "apientreprise_async.redis needs redis-py: pip install 'apientreprise_async[redis]'"
    ) from None

# Modules, not names: this module's public names are exactly its ``__all__``.
from . import _errors, _governor, _redis_lua
from .backends import Blocked as _Blocked
from .backends import BucketState as _BucketState
from .backends import Feedback as _Feedback
from .backends import Grant as _Grant
from .backends import InMemoryBackend as _InMemoryBackend
from .backends import Learned as _Learned
from .backends import SlotRequest as _SlotRequest

__all__ = ["FailMode", "RedisBackend", "RedisUnavailableError"]

_logger = logging.getLogger("apientreprise_async.redis")

FailMode = Literal["closed", "local"]

#: What "Redis cannot be reached" looks like (refused, reset, timed out, loading).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
)
_INF = math.inf
_LEARNED = {"same": _Learned.SAME, "adopted": _Learned.ADOPTED, "foreign": _Learned.FOREIGN}


class RedisUnavailableError(_errors.ApiEntrepriseError):
    """Redis could not be reached and the backend fails closed: nothing was sent.

    .. versionadded:: 0.1.0
    """


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend:
    """A :class:`~apientreprise_async.backends.GovernorBackend` shared through Redis.

    Args:
        redis: a ``redis://`` URL, or a ``redis.asyncio.Redis`` client (left
            open by :meth:`aclose`). A client given should use a
            ``BlockingConnectionPool`` (as one built from a URL does), or a pool
            larger than the calls in flight at once: a full default pool raises,
            which reads as Redis being unreachable.
        prefix: the start of every key and of the wake-up channel; give each
            application its own. Wrap it in braces (``"{myapp}"``) on a Redis
            Cluster so that all keys share one slot.
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

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
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
    ) -> None:
        if fail_mode not in ("closed", "local"):
            raise ValueError(f"fail_mode must be 'closed' or 'local', got {fail_mode!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        if not lease > 0 or idle_ttl < 0 or not recheck > 0:
            raise ValueError("lease and recheck must be positive, idle_ttl not negative")
        if isinstance(redis, str):
            # A blocking pool: past its size, a call waits for a connection. redis-py's
            # default pool raises instead (MaxConnectionsError, a ConnectionError),
            # which would pass for Redis being down.
            pool = aioredis.BlockingConnectionPool.from_url(
                redis,
                max_connections=100,
                timeout=None,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self._redis = aioredis.Redis(connection_pool=pool)
            self._owns = True
        else:
            self._redis = redis
            self._owns = False
        self.prefix = prefix
        self.fail_mode: FailMode = fail_mode
        self.workers = workers
        self._hash_key = (key.encode() if isinstance(key, str) else key) or b"apientreprise_async"
        self._ip_name = f"{prefix}:ip:{ip_scope}"
        self._channel = f"{prefix}:wake"
        self._origin = os.urandom(6).hex()
        self._common = (repr(float(lease)), repr(float(idle_ttl)), self._channel, self._origin)
        self._recheck = recheck
        self._scripts = {
            name: self._redis.register_script(getattr(_redis_lua, name))
            for name in ("ACQUIRE", "RELEASE", "SEED", "PAUSE", "ESTIMATE", "OCCUPY")
        }
        self._names: dict[str, str] = {}  # governor key -> Redis key
        self._keys: dict[str, str] = {}  # Redis key -> governor key
        self._seqs: dict[int, tuple[_Grant, tuple[str, ...]]] = {}
        self._states: dict[str, _BucketState] = {}
        self._paused: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # pauses not yet written to Redis
        # Local mode.
        self._local = _InMemoryBackend()
        self._local_grants: dict[int, _Grant] = {}
        self._local_grants_requests: dict[int, Sequence[_SlotRequest]] = {}
        self._local_ends: dict[str, tuple[_SlotRequest, list[float]]] = {}
        self._down = False
        self._retry_at = -_INF
        # Wake-ups.
        self._woken: dict[str, int] = {}  # governor key -> wake-ups delivered so far
        self._listener: asyncio.Task[None] | None = None
        self._alarm: asyncio.TimerHandle | None = None
        self._alarm_at = _INF
        self._closed = False
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
        if self._alarm is not None:
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
            await self._redis.aclose(close_connection_pool=True)

    def _ensure_listener(self) -> None:
        if self._closed:
            raise RuntimeError("this RedisBackend is closed")
        task = self._listener
        if task is not None and not task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "RedisBackend runs on asyncio only (redis-py's asyncio client)"
            ) from None
        self._listener = loop.create_task(self._listen(), name=f"{self._channel} listener")

    async def _listen(self) -> None:
        """Receive wake-ups and pauses published by other processes."""
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        # Anything published before now was missed: every head looks again.
                        self._wake_all()
                    elif message["type"] == "message":
                        self._on_message(_text(message["data"]))
            except _UNREACHABLE as exc:
                _logger.warning("Redis wake-up channel lost (%s); resubscribing", exc)
                await anyio.sleep(min(self._recheck, 1.0))
            finally:
                # Plain await: the task is cancelled natively (aclose), once; an anyio
                # shield here would swallow that cancellation and loop forever.
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    def _on_message(self, data: str) -> None:
        origin, kind, name, *rest = data.split(" ")
        if origin == self._origin:
            return  # release() woke this process's waiters from the script's reply
        key = self._keys.get(name)
        if key is None:
            return
        if kind == "w":
            self._wake(key)
        elif kind == "p" and rest:
            until = anyio.current_time() + float(rest[0])
            if until > self._paused.get(key, -_INF):
                self._paused[key] = until

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
        base = anyio.current_time()
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
        if when >= self._alarm_at:
            return
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_at = when
        loop = asyncio.get_running_loop()
        self._alarm = loop.call_later(max(when - anyio.current_time(), 0.0), self._ring)

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
                name = f"{self.prefix}:{digest}{sep}{rest}"
            self._names[key] = name
            self._keys[name] = key
        return name

    def _keys_of(self, requests: Sequence[_SlotRequest]) -> list[str]:
        keys: list[str] = []
        for request in requests:
            name = self._name(request.key)
            keys += (name, f"{name}:o", f"{name}:e")
        return keys

    @staticmethod
    def _request_args(request: _SlotRequest) -> tuple[str, str, str]:
        return (str(request.limit), request.op or "", "1" if request.probe else "0")

    def _mirror(self, key: str, fields: Sequence[Any], base: float) -> float | None:
        """Record one bucket's state from a script's reply; return its ready time."""
        ready_s, limit, confirmed, open_, ends, cap_left, cap_s, paused_s, lease_s = map(
            _text, fields
        )
        ready = None if ready_s == "n" else base + float(ready_s)
        paused = base + float(paused_s) if paused_s else -_INF
        if paused > self._paused.get(key, -_INF):
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

    # -- failure handling -----------------------------------------------------------------

    def _use_local(self) -> bool:
        return self._down and anyio.current_time() < self._retry_at

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
                "(fail_mode='local'); retrying every %g s",
                exc,
                self.workers,
                self._recheck,
            )
        self._down = True
        self._retry_at = anyio.current_time() + self._recheck

    async def _reachable(self) -> None:
        """Redis answered: after an outage, hand it what this process sent meanwhile."""
        if not self._down:
            return
        self._down = False
        _logger.warning("Redis reachable again: the shared buckets are back in use")
        await self._reachable_again()

    async def _reachable_again(self) -> None:
        now = anyio.current_time()
        pending, self._local_ends = self._local_ends, {}
        for request, ends in pending.values():
            live = [end for end in ends if end > now]
            if live:
                await self._occupy(request, live)

    async def _occupy(self, request: _SlotRequest, ends: Sequence[float]) -> None:
        now = anyio.current_time()
        await self._scripts["OCCUPY"](
            keys=self._keys_of([request]),
            args=[
                *self._common,
                *self._request_args(request),
                f"m:{self._origin}:{os.urandom(4).hex()}:",
                *(repr(end - now) for end in ends),
            ],
        )

    def _divided(self, request: _SlotRequest) -> _SlotRequest:
        return request._replace(limit=max(1, request.limit // self.workers))

    def _divided_feedback(self, feedback: _Feedback | None) -> _Feedback | None:
        if feedback is None:
            return None
        workers = self.workers
        return feedback._replace(
            limit=max(1, feedback.limit // workers), remaining=feedback.remaining // workers
        )

    async def _flush(self) -> None:
        """Write pauses recorded synchronously by :meth:`pause`, and make sure we listen."""
        self._ensure_listener()
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        script = self._scripts["PAUSE"]
        now = anyio.current_time()
        try:
            for key, until in pending.items():
                name = self._name(key)
                await script(
                    keys=[name, f"{name}:o", f"{name}:e"],
                    args=[*self._common, repr(until - now)],
                )
        except BaseException:
            for key, until in pending.items():
                self._pending[key] = max(until, self._pending.get(key, -_INF))
            raise

    # -- the protocol ---------------------------------------------------------------------

    async def _local_acquire(self, requests: Sequence[_SlotRequest]) -> _Grant | _Blocked:
        result = await self._local.acquire([self._divided(r) for r in requests])
        if type(result) is _Grant:
            self._local_grants[id(result)] = result
            self._local_grants_requests[id(result)] = requests  # undivided, for Redis later
        return result

    async def acquire(self, requests: Sequence[_SlotRequest]) -> _Grant | _Blocked:
        """Take one slot in every bucket of ``requests`` if all are free now, else none."""
        if self._use_local():
            return await self._local_acquire(requests)
        args = [*self._common, "a", str(len(requests))]
        for request in requests:
            args += self._request_args(request)
        for last in (False, True):
            seen = [self._woken.get(r.key, 0) for r in requests]
            try:
                await self._flush()
                reply = await self._scripts["ACQUIRE"](keys=self._keys_of(requests), args=args)
                await self._reachable()
            except _UNREACHABLE as exc:
                self._unreachable(exc, refuse=True)
                return await self._local_acquire(requests)
            if _text(reply[0]) != "b":
                break
            ready = self._blocked_ready(requests, reply, seen, last)
            if ready is not None:
                return _Blocked(ready)
        base = anyio.current_time()
        marks, seqs, probing = [], [], []
        for i, request in enumerate(requests):
            at = 1 + 12 * i
            marks.append(int(reply[at]))
            seqs.append(_text(reply[at + 1]))
            probing.append(_text(reply[at + 2]) == "1")
            self._mirror(request.key, reply[at + 3 : at + 12], base)
        grant = _Grant(tuple(requests), tuple(probing), tuple(marks))
        self._seqs[id(grant)] = (grant, tuple(seqs))
        return grant

    async def ready(self, requests: Sequence[_SlotRequest]) -> tuple[float | None, ...]:
        """Earliest grant time per request, without taking anything."""
        args = [*self._common, "r", str(len(requests))]
        for request in requests:
            args += self._request_args(request)
        for last in (False, True):
            if self._use_local():
                break
            seen = [self._woken.get(r.key, 0) for r in requests]
            try:
                await self._flush()
                reply = await self._scripts["ACQUIRE"](keys=self._keys_of(requests), args=args)
                await self._reachable()
            except _UNREACHABLE as exc:
                # Never raise here: the caller may hold a fresh grant. Failing closed, the
                # head wakes now and its own acquire raises.
                self._unreachable(exc, refuse=False)
                if self.fail_mode == "closed":
                    return (anyio.current_time(),) * len(requests)
                break
            ready = self._blocked_ready(requests, reply, seen, last)
            if ready is not None:
                return ready
        return await self._local.ready([self._divided(r) for r in requests])

    async def release(
        self, grant: _Grant, *, end: float | None, feedback: _Feedback | None = None
    ) -> _Learned | None:
        """Give the slots of ``grant`` back (see the protocol); never raises for Redis."""
        local = self._local_grants.pop(id(grant), None)
        if local is not None:
            learned = await self._local.release(
                grant, end=end, feedback=self._divided_feedback(feedback)
            )
            requests = self._local_grants_requests.pop(id(grant))
            if end is not None:
                for request in requests:
                    self._local_ends.setdefault(request.key, (request, []))[1].append(end)
                if not self._down:
                    # Granted locally before Redis came back: Redis must count it too.
                    try:
                        await self._reachable_again()
                    except _UNREACHABLE as exc:
                        self._unreachable(exc, refuse=False)
            return learned
        _, seqs = self._seqs.pop(id(grant))
        now = anyio.current_time()
        args = [*self._common, "" if end is None else repr(end - now)]
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
        for request, seq, mark, probing in zip(
            grant.requests, seqs, grant.marks, grant.probing, strict=True
        ):
            args += (*self._request_args(request), seq, str(mark), "1" if probing else "0")
        try:
            await self._flush()
            reply = await self._scripts["RELEASE"](keys=self._keys_of(grant.requests), args=args)
        except _UNREACHABLE as exc:
            # The slots stay open in Redis until their lease ends: safe, only slower.
            _logger.warning("Redis unreachable at release (%s): the slots free at lease end", exc)
            self._unreachable(exc, refuse=False)
            return None
        for request, woke in zip(grant.requests, reply[1:], strict=True):
            if _text(woke) == "1":
                # Its message is ignored here: wake this process's waiters now. The
                # governor wakes only a head already asleep; the flag may come from a
                # head whose acquire is still on its way back.
                self._wake(request.key)
        return _LEARNED.get(_text(reply[0]))

    async def seed(self, request: _SlotRequest, feedback: _Feedback) -> None:
        """Create (or correct) a bucket whose real limit is already known."""
        if not self._use_local():
            now = anyio.current_time()
            args = [
                *self._common,
                *self._request_args(request),
                str(feedback.limit),
                str(feedback.remaining),
                repr(feedback.reset_at - now),
            ]
            try:
                await self._flush()
                await self._scripts["SEED"](keys=self._keys_of([request]), args=args)
                return
            except _UNREACHABLE as exc:
                self._unreachable(exc, refuse=False)
        divided = self._divided_feedback(feedback)
        assert divided is not None
        await self._local.seed(self._divided(request), divided)

    def pause(self, key: str, until: float) -> None:
        """_Grant nothing in ``key`` before ``until``, here at once, elsewhere on the next call."""
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
            args = [*self._common, *self._request_args(request), str(position), repr(hold)]
            try:
                await self._flush()
                reply = await self._scripts["ESTIMATE"](keys=self._keys_of([request]), args=args)
                await self._reachable()
                return anyio.current_time() + float(_text(reply))
            except _UNREACHABLE as exc:
                self._unreachable(exc, refuse=True)
        return await self._local.estimate(self._divided(request), position, hold)

    def snapshot(self) -> Mapping[str, _BucketState]:
        """What this process last heard of every bucket (each script reply updates it)."""
        if self._down:
            return {**self._states, **self._local.snapshot()}
        return dict(self._states)
