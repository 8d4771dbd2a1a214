"""Admission control for every call: never banned, nearly all of the allowed throughput.

The client uses it like this::

    async with governor.permit(token_fingerprint, endpoint, max_wait=...) as permit:
        permit.sending()             # just before the request leaves
        response = await send()
        permit.observe(response.status_code, response.headers)

Each call takes a slot in its token's bucket (a throttle group, or the
operation itself) and one in the IP bucket, both at once. A slot is held from
the grant; if the request leaves, it stays occupied until one period (plus the
margin) after the answer. The server counts a call when it arrives, which is
between our send and our answer, so however its windows are aligned (clock
minutes, or opened by a first call) and however late a request lands, no
window can see more than the limit: any window holding ``n`` arrivals has
``n`` of our occupancy intervals overlapping at its end, and we never let
``limit + 1`` overlap. Counting from the grant instead would miss requests
that leave a loop turn later; a token bucket would let nearly twice the limit
through one server window.

An answer with ``RateLimit-*`` headers says which window counted the call:
the one ending at ``RateLimit-Reset``. Such a call is occupied only until
that window ends (no later than the rule above). The proof is the same: a
window counting ``n`` calls ends after each arrived, and each of them holds
its slot until the window is over, so ``n`` slots overlap just before its
end. It needs that end on our clock at the latest, never earlier: ``Reset``
is an epoch on the server's clock, mapped onto ours with a lower bound of the
clock offset that the answers themselves prove (:class:`_ServerClock`), plus
the margin; our own wall clock is never trusted for it. A call answered
without usable headers, timed out or cancelled in flight keeps the rule
above, as does the IP bucket (no header speaks of it). A slow provider then
costs a call nothing beyond its own window, where it used to hold its slot a
whole period after the answer.

``RateLimit-Remaining`` is used one way only. When it shows the server
counted *more* than our calls can account for, someone else uses the token:
it caps the grants until the reset, and near the end of such a window calls
go one at a time, so that the other program costs at most one 429 (which
pauses the bucket). When it shows *fewer* than we hold (another consumer
idle, a call we counted that never arrived or has not arrived yet), nothing
is given back: a call still on the network, or given up on by us, may land
later in the same window, and calls sent together arrive in any order, so a
lower count proves nothing about the calls it did not see. The slots freed
at each window's end (above) are the give-back that is provably safe: they
rest on what the server said of the call itself. Nor does a window with no
sign of another consumer serialise its last calls: every call it counts is
ours and holds a slot, so the slots alone keep it within the limit.

Guesses stay bounded where the server says nothing. A 429 without
``Retry-After`` or any ``RateLimit-*`` header pauses the bucket a full period
and lowers its limit to what the refusing window could have counted (the
calls answered within the last period). A limit the user set (a group's
limit other than the server's published one, or an override) is a ceiling:
the server's headers may lower it, never raise it.

Waiting is FIFO per bucket. Only the head of a queue is awake: it sleeps
until the exact time its slot frees (or, while its bucket waits for an
answer, until a release wakes it) and, once granted, sets the wake-up time of
the next head. A head whose bucket is ready but whose IP bucket is full joins
the IP queue, holding nothing meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from types import TracebackType

import anyio
import attrs

from ._catalogue import GROUP_LIMITS, IP_LIMIT, Endpoint, get_endpoint
from ._clock import Home, current_home, current_time
from ._clock import reset as reset_clock
from ._errors import ApiEntrepriseError, RateLimitError, retry_after_seconds
from ._response import _lower, _Window, parse_rate_limit, parse_window
from .backends import (
    Blocked,
    BucketState,
    Feedback,
    GovernorBackend,
    Grant,
    InMemoryBackend,
    Learned,
    SlotRequest,
    _Lane,
)

__all__ = [
    "BucketSnapshot",
    "Counters",
    "Governor",
    "GovernorSnapshot",
    "Limits",
    "Permit",
    "default_backend",
    "default_governor",
]

_logger = logging.getLogger("apientreprise_async.governor")

#: The key of the bucket every call of the process shares.
IP_KEY = "ip"
#: Answers without usable ``RateLimit-*`` headers to a route's slow-start probes
#: after which its configured limit is trusted (a server or a stub that never sends them).
_BLIND_PROBES = 3
_INF = math.inf
#: How fast our clock and the server's may drift apart, seconds per second (NTP's
#: largest slew, 500 ppm): a bound on their offset loosens by that much as it ages.
_DRIFT = 5e-4
#: A ``RateLimit-Reset`` above this is an epoch; below, delta-seconds (the RFC draft).
_EPOCH_RESET = 1e9
#: Numbers the governors built without a backend (the prefix of their token buckets).
_PRIVATE = itertools.count(1)
#: The lock over a backend's queues (re-entrant: in memory it is the backend's own).
_Lock = threading.RLock


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class Limits:
    """Rate limits per token and per IP, per ``period`` seconds.

    Attributes:
        groups: limit per throttle group (the server's configuration by default).
        overrides: limit per operation id; such an operation gets a bucket of its own.
        ip: calls per period from this process, all tokens together.
        period: the length of the server's window; scale it (``1.0``) for demos and tests.
        margin: fraction of ``period`` added to every slot's occupancy, to every
            pause and to every ``RateLimit-Reset``: room for clock and network jitter.
        slow_start: until a bucket's (then an operation's) first answer showed the
            real limit, send one call and hold the others.

    .. versionadded:: 0.1.0
    """

    groups: Mapping[str, int] = attrs.field(factory=lambda: dict(GROUP_LIMITS))
    overrides: Mapping[str, int] = attrs.field(factory=dict)
    ip: int = IP_LIMIT
    period: float = attrs.field(default=60.0, validator=_positive)
    margin: float = attrs.field(default=0.005)
    slow_start: bool = True

    @margin.validator
    def _check_margin(self, _: attrs.Attribute[float], value: float) -> None:
        if not 0 <= value < 1:
            raise ValueError(f"margin must be a fraction of the period in [0, 1), got {value!r}")

    @property
    def hold(self) -> float:
        """How long a sent call occupies its slot after its answer."""
        return self.period * (1.0 + self.margin)

    def is_ceiling(self, endpoint: Endpoint) -> bool:
        """Whether the user set ``endpoint``'s limit (an override, or a group's own value).

        Such a limit is a ceiling: the server's ``RateLimit-Limit`` may lower
        it, never raise it (the user may keep room for another program).
        """
        if endpoint.operation_id in self.overrides:
            return True
        group = endpoint.rate_group
        return group in self.groups and self.groups[group] != GROUP_LIMITS.get(group)

    def bucket_for(self, endpoint: Endpoint) -> tuple[str, int]:
        """The bucket name and configured limit for ``endpoint``."""
        op = endpoint.operation_id
        override = self.overrides.get(op)
        if override is not None:
            return op, override
        limit = self.groups.get(endpoint.rate_group)
        if limit is None:
            # An unknown group: guess low, slow start will learn the real value.
            limit = min(self.groups.values(), default=1)
        if endpoint.per_endpoint:
            # The versions of one endpoint share a bucket until the server shows
            # separate counters (Governor._separate): the stricter guess.
            return _family(endpoint), limit
        return endpoint.bucket, limit


def _family(endpoint: Endpoint) -> str:
    """The latest version of a per-endpoint operation (its successors, same group)."""
    name = endpoint.operation_id
    successor = endpoint.successor
    seen = {name}
    while successor is not None and successor not in seen:
        try:
            later = get_endpoint(successor)
        except ApiEntrepriseError:
            break
        if not later.per_endpoint or later.rate_group != endpoint.rate_group:
            break
        name = successor
        seen.add(name)
        successor = later.successor
    return name


@attrs.frozen
class Counters:
    """Totals since the governor was created.

    Attributes:
        grants: permits granted.
        waits: permits that had to queue.
        wait_time: seconds spent queuing, all permits together.
        rate_limited: 429 answers observed.
        rejections: calls refused locally because ``max_wait`` could not be met.
        wakeups: times a queued call woke up (ideally one per queued grant).
    """

    grants: int = 0
    waits: int = 0
    wait_time: float = 0.0
    rate_limited: int = 0
    rejections: int = 0
    wakeups: int = 0


@attrs.frozen
class BucketSnapshot:
    """One bucket as the governor sees it.

    Attributes:
        limit: calls allowed per period (the server's value once it answered).
        confirmed: whether an answer has shown that limit.
        in_period: calls holding a slot: in flight, or answered less than a period ago.
        in_flight: calls granted and not yet answered.
        queued: calls of this governor waiting for the bucket.
        next_free: when the next call could be granted (``None``: after an answer).
        paused_until: end of a pause after a 429 (``-inf``: none).
        cap_remaining: what the server's ``RateLimit-Remaining`` still allows, if in force.
    """

    key: str
    limit: int
    confirmed: bool
    in_period: int
    in_flight: int
    queued: int
    next_free: float | None
    paused_until: float
    cap_remaining: int | None

    @classmethod
    def _of(cls, state: BucketState, queued: int) -> BucketSnapshot:
        return cls(
            key=state.key,
            limit=state.limit,
            confirmed=state.confirmed,
            in_period=state.occupied,
            in_flight=state.open,
            queued=queued,
            next_free=state.next_free,
            paused_until=state.paused_until,
            cap_remaining=state.cap_remaining,
        )


@attrs.frozen
class GovernorSnapshot:
    """Every bucket and the counters, at ``now`` (the process timeline, see :mod:`._clock`)."""

    now: float
    buckets: Mapping[str, BucketSnapshot]
    counters: Counters


class _Route:
    """Where the calls of one (token, operation) go, and the queues of those buckets."""

    __slots__ = ("blind", "bucket_queue", "configured", "ip_queue", "lane", "requests")

    def __init__(
        self,
        requests: tuple[SlotRequest, SlotRequest],
        configured: int,
        bucket_queue: _Queue,
        ip_queue: _Queue,
    ) -> None:
        self.requests = requests
        self.configured = configured
        self.bucket_queue = bucket_queue
        self.ip_queue = ip_queue
        # Its buckets, found once, for the in-memory backend's hot path.
        self.lane = _Lane(requests)
        # Probes answered without usable RateLimit headers (see _BLIND_PROBES).
        self.blind = 0


class _Entry:
    """A waiter's place in one queue; dead entries are skipped, not searched for."""

    __slots__ = ("alive", "waiter")

    def __init__(self, waiter: _Waiter) -> None:
        self.waiter = waiter
        self.alive = True


class _Queue:
    """FIFO of waiters for one bucket (under the governor's lock), whatever loop they are on."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.size = 0

    def push(self, waiter: _Waiter) -> _Entry:
        entry = _Entry(waiter)
        self.entries.append(entry)
        self.size += 1
        return entry

    def head(self) -> _Waiter | None:
        """The first waiter whose loop runs (one of a stopped loop steps out: _Waiter.evict)."""
        entries = self.entries
        while entries:
            entry = entries[0]
            if entry.alive:
                waiter = entry.waiter
                if waiter.home.running():
                    return waiter
                waiter.evict()
            entries.popleft()
        return None

    def remove(self, entry: _Entry) -> None:
        if entry.alive:
            entry.alive = False
            self.size -= 1
            self.head()  # drop dead entries at the front now, so memory follows the size


class _Waiter:
    """One queued call, asleep on its own event loop.

    Every field is read and written under the governor's lock. Another loop
    never touches the waiter's event or cancel scope: it records the wake-up
    time in ``kicked`` and asks the waiter's loop to apply it (:meth:`wake_at`).
    """

    __slots__ = (
        "bucket_entry",
        "bucket_queue",
        "event",
        "evicted",
        "for_release",
        "home",
        "ip_entry",
        "ip_queue",
        "kicked",
        "lock",
        "route",
        "scheduled",
        "scope",
        "until",
    )

    def __init__(self, route: _Route, home: Home, lock: _Lock, bucket: _Queue, ip: _Queue) -> None:
        self.route = route
        self.home = home
        self.lock = lock
        self.scope: anyio.CancelScope | None = None
        self.event: anyio.Event | None = None
        self.until = _INF  # when it wakes on its own, on the process timeline
        # The earliest wake-up asked for and not yet applied (-inf: at once).
        self.kicked = _INF
        # Sleeping until a release (its own deadline, if any, is only max_wait's).
        self.for_release = False
        self.scheduled = False  # a wake-up is on its way to its loop
        self.evicted = False  # taken out of the queues while its loop was stopped
        self.bucket_queue = bucket
        self.ip_queue = ip
        self.bucket_entry: _Entry | None = None
        self.ip_entry: _Entry | None = None

    def wake_at(self, when: float) -> bool:
        """Make the waiter wake no later than ``when`` (lock held; any thread or loop).

        Returns ``False`` when its loop is gone: it was taken out of the queues.
        """
        if when < self.kicked:
            self.kicked = when
        if self.scope is None:
            return True  # not asleep (between two awaits): it reads kicked before sleeping
        home = self.home
        if home is current_home():
            self.apply()
            return True
        if self.scheduled:
            return True
        self.scheduled = True
        if home.soon(self._deliver):
            return True
        self.scheduled = False
        self.evict()
        return False

    def apply(self) -> None:
        """On the waiter's own loop, lock held: act on ``kicked``."""
        when = self.kicked
        scope = self.scope
        if when == _INF or scope is None:
            return
        self.kicked = _INF
        if when == -_INF or when <= current_time():
            assert self.event is not None
            self.event.set()  # wake now: far cheaper than a deadline's cancellation
        elif when < self.until:
            self.until = when
            scope.deadline = self.home.deadline(when)

    def _deliver(self) -> None:
        with self.lock:
            self.scheduled = False
            self.apply()

    def evict(self) -> None:
        """Step out of the queues: its loop stopped, and must not hold the others up.

        A loop that ends cancels its tasks, whose waiters leave by themselves;
        this is for a loop stopped with tasks still waiting (``run_until_complete``
        returning, a loop closed without cancelling them). When the loop runs
        again the waiter wakes and queues again, at the back.
        """
        for entry, queue in (
            (self.bucket_entry, self.bucket_queue),
            (self.ip_entry, self.ip_queue),
        ):
            if entry is not None and entry.alive:
                entry.alive = False
                queue.size -= 1
        self.bucket_entry = None
        self.ip_entry = None
        self.evicted = True
        self.kicked = -_INF
        if self.scope is not None and not self.scheduled:
            self.scheduled = self.home.soon(self._deliver)

    def asleep_on_release(self) -> bool:
        """Asleep with no wake-up time: only a release can move it."""
        return self.scope is not None and self.for_release


class _Shared:
    """What governors sharing one backend share: its queues, and the lock over them."""

    __slots__ = ("forget", "lock", "queues")

    def __init__(self, lock: _Lock) -> None:
        self.lock = lock
        self.queues: dict[str, _Queue] = {}
        # Scopes of collected governors whose finalizer found the lock taken.
        self.forget: list[str] = []


# Governors sharing a backend share its queues, so a release by one wakes the other's waiters.
_SHARED: weakref.WeakKeyDictionary[GovernorBackend, _Shared] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()
_default_backend: InMemoryBackend | None = None
_default_governor: Governor | None = None


def _shared_for(backend: GovernorBackend) -> _Shared:
    with _registry_lock:
        shared = _SHARED.get(backend)
        if shared is None:
            # In memory, the backend's own lock: one lock per permit, not two.
            lock = backend._lock if isinstance(backend, InMemoryBackend) else threading.RLock()
            shared = _SHARED[backend] = _Shared(lock)
        return shared


_held_at_fork: list[_Lock] = []


def _before_fork() -> None:
    # A lock another thread holds at fork() would stay held for ever in the child.
    _registry_lock.acquire()
    _held_at_fork[:] = [shared.lock for shared in list(_SHARED.values())]
    for lock in _held_at_fork:
        lock.acquire()


def _after_fork() -> None:
    for lock in reversed(_held_at_fork):
        lock.release()
    _held_at_fork.clear()
    _registry_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def default_backend() -> InMemoryBackend:
    """The process-wide in-memory backend: every governor built without one uses it.

    So the IP bucket (key ``"ip"``) is one per process, whatever the limits of
    each client. Token buckets (and their 429 pauses) are shared by the clients
    of the default governor and by governors given this backend explicitly; a
    ``Governor()`` built without a backend keeps its own. Safe from any thread
    and any event loop, at once or one after another: its times are on one
    process-wide timeline (a test suite resets it between tests with
    :func:`apientreprise_async.testing.reset_default_governor`).

    Processes of one host share it too: alone, it keeps its buckets in memory;
    once another live process of the host uses its default backend, both move
    to a :class:`~apientreprise_async.host.HostBackend` in
    :func:`~apientreprise_async.host.runtime_directory`, so that together they
    stay under each token's limits and the IP's (logged once at INFO).

    .. versionadded:: 0.1.0
    """
    global _default_backend  # lazily created process-wide singleton
    backend = _default_backend
    if backend is None:
        make: Callable[[], InMemoryBackend] = InMemoryBackend
        try:
            from ._sharing import new_default_backend

            make = new_default_backend
        except ImportError:  # pragma: no cover - no fcntl (Windows): this process alone
            pass
        with _registry_lock:
            if _default_backend is None:
                _default_backend = make()
            backend = _default_backend
    return backend


def default_governor() -> Governor:
    """The governor every client uses unless given one (default :class:`Limits`).

    One per process, shared by every thread and event loop (see :func:`default_backend`).

    .. versionadded:: 0.1.0
    """
    global _default_governor  # lazily created process-wide singleton
    governor = _default_governor
    if governor is None:
        candidate = Governor(backend=default_backend())
        with _registry_lock:
            if _default_governor is None:
                _default_governor = candidate
            governor = _default_governor
    return governor


def reset_default() -> None:
    """Forget the process-wide governor's state: for test suites, between tests.

    The next :func:`default_governor` is a new one (fresh counters, nothing
    learned) with the same limits (configuration is not state: a test suite
    that set ``default_governor().limits`` keeps them), on the same, now
    empty, :func:`default_backend`; the next event loop seen anchors the
    governor's timeline (so a test on trio's ``MockClock`` sees its own clock
    in snapshots). Clients built earlier keep the governor they were given.
    Call it only while no call is in flight or queued.

    .. versionadded:: 0.1.0
    """
    global _default_governor  # replaced: a fresh one with the same settings
    with _registry_lock:
        old = _default_governor
        _default_governor = None
        backend = _default_backend
    if backend is not None:
        backend.clear()
    reset_clock()
    if old is not None and backend is not None:
        fresh = Governor(old.limits, backend=backend, wall_clock=old._wall_clock)
        with _registry_lock:
            if _default_governor is None:
                _default_governor = fresh


def _retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """``Retry-After`` alone, in seconds (``RateLimit-Reset`` is read on the server's clock).

    The parser the errors use too (seconds or an HTTP date, one cap): the pause
    and ``exc.retry_after`` agree.
    """
    return retry_after_seconds(headers, None, None, wall_now)


class _ServerClock:
    """What the answers prove about the server's clock: bounds on its offset to ours.

    The offset is the server's epoch less our anyio clock. A call sent at
    ``s`` and answered at ``r`` arrived at some ``a`` in ``[s, r]``; if the
    window that counted it is ``[reset - period, reset)`` on the server's
    clock, then ``reset - period <= a + offset < reset``, so::

        reset - period - r <= offset < reset - s

    ``Date`` (whole seconds, stamped between the arrival and the answer) gives
    ``date - r <= offset < date + 1 - s``. Each answer's bounds hold on their
    own, so the tightest ones seen are kept; under load some call lands just
    after its window opens and is answered at once, and the lower bound comes
    within a round trip of the truth. Safety needs only the lower bound: the
    window ends on our clock at ``reset - offset``, hence no later than
    ``reset - low``.

    Clocks drift (NTP slews a clock by at most 500 ppm): a bound loses
    ``_DRIFT`` seconds per second of age. A clock that steps, or an answer
    with a nonsensical ``Reset``, shows as bounds that contradict the others:
    the estimate then widens to allow both (the lower of the two lower
    bounds), and later answers tighten it again. The margin covers a step no
    answer has shown yet.
    """

    __slots__ = ("high", "high_at", "low", "low_at")

    def __init__(self) -> None:
        self.low = -_INF
        self.low_at = 0.0
        self.high = _INF
        self.high_at = 0.0

    def lower(self, now: float) -> float:
        """The lower bound in force at ``now`` (``-inf``: nothing known)."""
        return self.low - _DRIFT * (now - self.low_at)

    def learn(self, low: float, high: float, now: float) -> float:
        """Take one answer's bounds; return the lower bound now in force."""
        current_low = self.lower(now)
        current_high = self.high + _DRIFT * (now - self.high_at)
        if low > current_high or high < current_low:
            # Bounds that contradict each other: a clock stepped, or an answer lies
            # (a Reset far off). Keep what both allow, the safe side of each.
            if low < current_low:
                self.low, self.low_at = low, now
            if high > current_high:
                self.high, self.high_at = high, now
            return min(low, current_low)
        if low > current_low:
            self.low, self.low_at = low, now
            current_low = low
        if high < current_high:
            self.high, self.high_at = high, now
        return current_low


class Permit:
    """One admitted call: an async context manager from :meth:`Governor.permit`.

    Leaving the context before :meth:`sending` frees the slots untouched;
    leaving after it keeps them occupied for a period after the answer.
    """

    __slots__ = (
        "_answered",
        "_endpoint",
        "_feedback",
        "_governor",
        "_grant",
        "_lower_to",
        "_max_wait",
        "_route",
        "_sent",
        "_sent_at",
        "_split",
        "_token",
    )

    def __init__(
        self, governor: Governor, token: str, endpoint: Endpoint, max_wait: float | None
    ) -> None:
        self._governor = governor
        self._token = token
        self._endpoint = endpoint
        self._max_wait = max_wait
        self._grant: Grant | None = None
        self._sent = False
        self._sent_at = -_INF
        self._answered: float | None = None
        self._feedback: Feedback | None = None
        # A 429 that told nothing: the bucket's limit goes down to this (see _lower_limit).
        self._lower_to: int | None = None
        # The answer showed that this version of an endpoint counts apart (see _separate).
        self._split: str | None = None
        # The route of a grant taken on the hot path, whose queues then need no lookup.
        self._route: _Route | None = None

    def __repr__(self) -> str:
        state = "sent" if self._sent else "granted" if self._grant else "idle"
        return f"<Permit {self._endpoint.operation_id} {state}>"

    async def __aenter__(self) -> Permit:
        governor = self._governor
        endpoint = self._endpoint
        route = governor._routes.get((self._token, endpoint.operation_id))
        if route is None:
            route = governor._route(self._token, endpoint)
        # The hot path, inlined: nobody queued (FIFO: never overtake a waiter), both
        # buckets free. In memory, no coroutine: acquiring never waits there, and
        # one lock covers the queues and the buckets.
        memory = governor._memory
        if memory is not None:
            # acquire()/release() rather than ``with``: measurably cheaper on this path.
            governor._lock_acquire()
            try:
                if not route.bucket_queue.size and not route.ip_queue.size:
                    result = memory._acquire_lane(route.lane)
                    if type(result) is Grant:
                        governor._grants += 1
                        self._grant = result
                        self._route = route
                        return self
            finally:
                governor._lock_release()
        elif not route.bucket_queue.size and not route.ip_queue.size:
            result = await governor._backend.acquire(route.requests)
            if type(result) is Grant:
                with governor._lock:
                    governor._grants += 1
                self._grant = result
                self._route = route
                return self
        self._grant = await governor._admit(self._token, endpoint, route, self._max_wait)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        grant = self._grant
        if grant is None:
            return
        self._grant = None
        governor = self._governor
        memory = governor._memory
        if memory is None:
            await governor._finish(self, grant)
            return
        # In memory, the same as _finish without its coroutines.
        route = self._route
        feedback = self._feedback
        end: float | None
        learned: Learned | None = None
        governor._lock_acquire()
        try:
            if self._sent:
                answered = self._answered
                end = (answered if answered is not None else current_time()) + governor._hold
                if feedback is None:
                    # The hot path: nothing to learn.
                    memory._release_sent(grant, end, None if route is None else route.lane)
                    if answered is not None and grant.probing[0]:
                        governor._blind_probe(self, grant)
                else:
                    learned = memory.release_now(grant, end=end, feedback=feedback)
            else:
                end = None
                learned = memory.release_now(grant, end=None, feedback=feedback)
            changed = learned is not None and learned is not Learned.SAME
            # What the answer taught beyond the release runs after the lock (it may await).
            more = changed or self._split is not None or self._lower_to is not None
            if not more and (
                route is None
                or route.requests is not grant.requests
                or route.bucket_queue.size
                or route.ip_queue.size
            ):
                governor._wake_heads(grant, end, False)
        finally:
            governor._lock_release()
        if more:
            if changed and learned is not None and feedback is not None:
                await governor._learned(memory, self, grant, learned, feedback)
            if self._split is not None and self._sent and feedback is not None:
                await governor._split_family(self, self._split, feedback)
            if self._lower_to is not None:
                await governor._lower_limit(grant, self._lower_to)
            with governor._lock:
                governor._wake_heads(grant, end, changed)

    @property
    def operation_id(self) -> str:
        """The operation this permit admits."""
        return self._endpoint.operation_id

    def sending(self) -> None:
        """Mark the moment the request leaves: from now on the call counts.

        Raises:
            RateLimitError: a 429 paused the bucket since the grant (``local`` is
                true); leave the context, the slot is freed.
        """
        grant = self._grant
        if grant is None:
            raise RuntimeError("Permit.sending() called outside its context")
        if self._sent:
            return
        governor = self._governor
        memory = governor._memory
        if memory is None or memory._paused_any != -_INF:
            self._check_pauses(grant)
        self._sent = True
        self._sent_at = current_time()

    def _check_pauses(self, grant: Grant) -> None:
        backend = self._governor._backend
        for request in grant.requests:
            paused = backend.paused_until(request.key)
            if paused != -_INF:
                now = current_time()
                if paused > now:
                    with self._governor._lock:
                        self._governor._rejections += 1
                    raise RateLimitError(
                        f"{self.operation_id}: bucket {request.key} paused after a 429",
                        retry_after=paused - now,
                        local=True,
                        operation_id=self.operation_id,
                    )

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from the answer: ``RateLimit-*`` headers, and a 429's ``Retry-After``.

        Malformed headers are ignored. Feedback takes effect when the context
        exits; a 429's pause takes effect at once.
        """
        governor = self._governor
        now = current_time()
        self._answered = now
        headers = _lower(headers)
        rate_limit = parse_window(headers)
        limits = governor.limits
        slack = limits.period * limits.margin
        feedback: Feedback | None = None
        if rate_limit is not None:
            # The clock bounds are the governor's, shared by every thread: one at a time.
            with governor._lock:
                if status == 429:
                    # Refused: whatever the bounds said, start again from what the answers prove.
                    governor._server_clock = _ServerClock()
                # The end of the server window that counted this call, on our clock (at the latest).
                ends = governor._window_end(rate_limit.reset_epoch, headers, self._sent_at, now)
            # The window opened a period before its end (a margin earlier, to be safe).
            opened = ends - limits.period - slack
            feedback = self._feedback = Feedback(
                rate_limit.limit,
                # A 429: the window counted at least one call past its limit.
                -1 if status == 429 else rate_limit.remaining,
                ends + slack,
                opened,
                opened + limits.hold,
            )
            if self._endpoint.per_endpoint and status != 429:
                with governor._lock:
                    self._split = governor._separate(self, rate_limit)
        if status == 429:
            with governor._lock:
                governor._rate_limited += 1
            grant = self._grant
            seconds = _retry_after(headers, governor._wall_clock())
            until = -_INF
            if seconds is not None:
                until = now + seconds + slack  # already within MAX_RETRY_AFTER
            if feedback is not None:
                # Until the refusing window has surely ended, whatever Retry-After says.
                until = max(until, feedback.reset_at)
            if until == -_INF:
                # Nothing tells which window refused the call, or what it counted.
                until = now + limits.period + slack
                if grant is not None and parse_rate_limit(headers) is None:
                    with governor._lock:
                        self._lower_to = governor._counted(grant, until, now)
            if grant is not None:
                governor._backend.pause(grant.requests[0].key, until)


class Governor:
    """Keeps every token and the whole process under the API's limits.

    Args:
        limits: the limits to respect (:class:`Limits` defaults).
        backend: where buckets live. Without one, the governor counts its calls
            in the process's IP bucket (:func:`default_backend`) but keeps token
            buckets and 429 pauses of its own, so that a client given its own
            ``Governor()`` is not held back by the others' (two governors using
            one token may then together pass that token's limit). Pass
            ``default_backend()`` to share everything with the process's
            governors, or an :class:`~apientreprise_async.backends.InMemoryBackend`
            of its own to keep even the IP bucket apart (another egress IP, a test).
        wall_clock: epoch seconds, used only to read HTTP dates in
            ``Retry-After``. ``RateLimit-Reset`` is read on the server's own
            clock, bounded from the answers (see the module's docstring).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        backend: GovernorBackend | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Its token buckets live under a prefix of its own in the process backend;
        # the IP bucket's key has none, so the process ceiling still holds.
        self._scope = "" if backend is not None else f"governor-{next(_PRIVATE)}:"
        self._backend: GovernorBackend = default_backend() if backend is None else backend
        shared = _shared_for(self._backend)
        if self._scope:
            # Its buckets would otherwise outlive it in the process backend.
            weakref.finalize(self, _forget_scope, self._backend, self._scope)
        self.limits = limits or Limits()  # after the backend: the setter tells it the hold
        self._queues = shared.queues
        self._lock = shared.lock
        self._lock_acquire = shared.lock.acquire
        self._lock_release = shared.lock.release
        # The in-memory backend, when its coroutines can be skipped: nothing in
        # it waits, so its synchronous twins do the same, a coroutine cheaper.
        backend_type = type(self._backend)
        self._memory: InMemoryBackend | None = (
            self._backend
            if isinstance(self._backend, InMemoryBackend)
            and backend_type.acquire is InMemoryBackend.acquire
            and backend_type.release is InMemoryBackend.release
            else None
        )
        self._wall_clock = wall_clock
        self._server_clock = _ServerClock()
        self._date_text = ""  # the last Date header read, and its value
        self._date_value: float | None = None
        # Per family bucket (versions of one endpoint): the server window last
        # seen, and which operation each Remaining of it came from.
        self._families: dict[str, tuple[float, dict[int, str]]] = {}
        # Per bucket, after a 429 telling nothing: the pause's end, the slots
        # held at the first such 429, and the 429s since (see _counted).
        self._refusals: dict[str, list[float]] = {}
        self._routes: dict[tuple[str, str], _Route] = {}
        self._logged: set[str] = set()
        self._grants = 0
        self._waits = 0
        self._wait_time = 0.0
        self._rate_limited = 0
        self._rejections = 0
        self._wakeups = 0

    @property
    def limits(self) -> Limits:
        """The limits this governor respects."""
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits
        self._hold = limits.hold
        # A shared backend guards against a lost state for as long as a slot may be held.
        note_hold = getattr(self._backend, "_note_hold", None)
        if note_hold is not None:
            note_hold(limits.hold)

    def __repr__(self) -> str:
        with self._lock:
            queued = sum(q.size for q in self._queues.values())
            wakes = [
                w.until
                for q in list(self._queues.values())
                if (w := q.head()) is not None and w.scope is not None
            ]
        next_wake = f"{min(wakes):.3f}" if wakes and min(wakes) != _INF else "none"
        return (
            f"<Governor period={self.limits.period:g}s routes={len(self._routes)} "
            f"queued={queued} next_wakeup={next_wake} grants={self._grants} "
            f"429s={self._rate_limited}>"
        )

    def permit(self, token: str, endpoint: Endpoint, *, max_wait: float | None = None) -> Permit:
        """Wait for a slot for ``endpoint`` in ``token``'s bucket and in the IP bucket.

        Args:
            token: the token's fingerprint (never the token itself).
            endpoint: the catalogue entry of the call.
            max_wait: longest acceptable wait in seconds; ``None`` waits as long as needed.

        Raises:
            RateLimitError: (on entering) the slot would come later than
                ``max_wait``; ``retry_after`` says when it should be free.
        """
        return Permit(self, token, endpoint, max_wait)

    @property
    def counters(self) -> Counters:
        """Totals since creation."""
        with self._lock:
            return Counters(
                grants=self._grants,
                waits=self._waits,
                wait_time=self._wait_time,
                rate_limited=self._rate_limited,
                rejections=self._rejections,
                wakeups=self._wakeups,
            )

    def snapshot(self) -> GovernorSnapshot:
        """Per bucket: limit, calls in the current period, queue length, next free time.

        Times are on the process timeline (the running loop's clock in a
        program with one loop; see :func:`default_backend`).
        """
        backend = self._backend
        scope = self._scope
        states = backend.snapshot()
        buckets = {}
        with self._lock:
            for key, state in states.items():
                shown = key
                if scope and key != IP_KEY:
                    if not key.startswith(scope):
                        continue  # another governor's bucket in the shared backend
                    shown = key.removeprefix(scope)
                bucket = BucketSnapshot._of(state, self._queued(key))
                buckets[shown] = attrs.evolve(bucket, key=shown) if shown != key else bucket
        return GovernorSnapshot(current_time(), buckets, self.counters)

    def _window_end(
        self, reset: float, headers: Mapping[str, str], sent: float, now: float
    ) -> float:
        """The latest time, on our clock, at which the window that counted a call ends.

        ``reset`` is that window's ``RateLimit-Reset``: delta-seconds counted
        from the answer (which left the server before we read it), or an epoch
        on the server's clock, mapped onto ours with the lower bound of the
        offset (:class:`_ServerClock`). Never later than a period after the
        answer: the window opened before the call arrived.
        """
        period = self._limits.period
        if reset <= _EPOCH_RESET:
            return now + min(reset, period)
        low = reset - period - now
        high = reset - sent
        date = self._date(headers.get("date"))
        if date is not None and date - now <= high and date + 1.0 - sent >= low:
            low = max(low, date - now)
            high = min(high, date + 1.0 - sent)
        offset = self._server_clock.learn(low, high, now)
        return min(reset - offset, now + period)

    def _date(self, value: str | None) -> float | None:
        """A ``Date`` header as an epoch (cached: it changes once a second)."""
        if value is None:
            return None
        if value != self._date_text:
            self._date_text = value
            self._date_value = None
            # One comma: a single HTTP-date (two Date headers, joined, are ignored).
            if value.count(",") == 1:
                with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                    self._date_value = parsedate_to_datetime(value).timestamp()
        return self._date_value

    def _queued(self, key: str) -> int:
        queue = self._queues.get(key)
        return 0 if queue is None else queue.size

    @property
    def backend(self) -> GovernorBackend:
        """Where this governor's buckets live."""
        return self._backend

    def _route(self, token: str, endpoint: Endpoint) -> _Route:
        with self._lock:
            route = self._routes.get((token, endpoint.operation_id))
            if route is None:
                limits = self.limits
                name, limit = limits.bucket_for(endpoint)
                bucket = SlotRequest(
                    f"{self._scope}{token}/{name}",
                    limit,
                    endpoint.operation_id,
                    limits.slow_start,
                    limits.is_ceiling(endpoint),
                )
                route = _Route(
                    (bucket, SlotRequest(IP_KEY, limits.ip)),
                    limit,
                    self._queue(bucket.key),
                    self._queue(IP_KEY),
                )
                self._routes[(token, endpoint.operation_id)] = route
            return route

    def _queue(self, key: str) -> _Queue:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        return queue

    async def _admit(
        self, token: str, endpoint: Endpoint, route: _Route, max_wait: float | None
    ) -> Grant:
        """The slow path of :meth:`Permit.__aenter__`: refuse at once, or queue."""
        backend = self._backend
        if max_wait is not None:
            await self._check_deadline(backend, route, endpoint, max_wait)
        return await self._wait(backend, token, endpoint, route, max_wait)

    async def _check_deadline(
        self, backend: GovernorBackend, route: _Route, endpoint: Endpoint, max_wait: float
    ) -> None:
        """Refuse at once a call whose slot would come after ``max_wait``."""
        now = current_time()
        when = await self._eta(backend, route)
        if when - now > max_wait:
            with self._lock:
                self._rejections += 1
            raise RateLimitError(
                f"{endpoint.operation_id}: no slot before {when - now:.3f} s "
                f"(max_wait={max_wait:g} s)",
                retry_after=when - now,
                local=True,
                operation_id=endpoint.operation_id,
            )

    async def _eta(self, backend: GovernorBackend, route: _Route) -> float:
        bucket_request, ip_request = route.requests
        hold = self.limits.hold
        bucket_queue = self._queues.get(bucket_request.key)
        ip_queue = self._queues.get(IP_KEY)
        ahead = 0 if bucket_queue is None else bucket_queue.size
        ip_ahead = 0 if ip_queue is None else ip_queue.size
        return max(
            await backend.estimate(bucket_request, ahead, hold),
            await backend.estimate(ip_request, ip_ahead, hold),
        )

    async def _wait(
        self,
        backend: GovernorBackend,
        token: str,
        endpoint: Endpoint,
        route: _Route,
        max_wait: float | None,
    ) -> Grant:
        lock = self._lock
        memory = self._memory
        start = current_time()
        deadline = None if max_wait is None else start + max_wait
        home = current_home()
        assert home is not None  # a permit is entered in a task
        with lock:
            waiter = _Waiter(
                route, home, lock, self._queue(route.requests[0].key), self._queue(IP_KEY)
            )
            waiter.bucket_entry = waiter.bucket_queue.push(waiter)
            self._waits += 1
        granted = False
        try:
            while True:
                with lock:
                    if waiter.evicted:
                        # Its loop was stopped a while: back in the queue, at the back.
                        waiter.evicted = False
                        waiter.bucket_entry = waiter.bucket_queue.push(waiter)
                    first = waiter.bucket_queue.head() is waiter
                    current = self._route(token, endpoint) if first else waiter.route
                if not first:
                    await self._sleep(waiter, _INF, deadline, endpoint)
                    continue
                if current is not waiter.route:
                    # The server showed that this operation has a bucket of its own.
                    with lock:
                        left = waiter.bucket_queue
                        self._leave(waiter)
                        waiter.route = current
                        waiter.bucket_queue = self._queue(current.requests[0].key)
                        waiter.bucket_entry = waiter.bucket_queue.push(waiter)
                    await self._schedule_head(left)
                    continue
                requests = waiter.route.requests
                if memory is not None:
                    # One lock over the acquire and the queues: no release slips in between.
                    with lock:
                        result = memory.acquire_now(requests)
                        grant, until, rescheduled = self._took(waiter, result, start)
                        for queue in rescheduled:
                            self._schedule_head_now(memory, queue)
                else:
                    result = await backend.acquire(requests)
                    with lock:
                        grant, until, rescheduled = self._took(waiter, result, start)
                    for queue in rescheduled:
                        await self._schedule_head(queue)
                if grant is not None:
                    granted = True
                    return grant
                await self._sleep(waiter, until, deadline, endpoint)
        finally:
            if not granted:
                # Cancelled or refused: leave without a trace, and pass the turn on.
                with lock:
                    self._leave(waiter)
                    self._kick(waiter.bucket_queue)
                    self._kick(waiter.ip_queue)

    def _took(
        self, waiter: _Waiter, result: Grant | Blocked, start: float
    ) -> tuple[Grant | None, float | None, tuple[_Queue, ...]]:
        """After the head's acquire (lock held): the grant, or how long to sleep.

        Also the queues whose new head needs its wake-up time.
        """
        if type(result) is Grant:
            self._grants += 1
            self._wait_time += current_time() - start
            was_ip = waiter.ip_entry is not None
            self._leave(waiter)
            if was_ip:
                return result, None, (waiter.bucket_queue, waiter.ip_queue)
            return result, None, (waiter.bucket_queue,)
        assert isinstance(result, Blocked)
        bucket_ready, ip_ready = result.ready
        if bucket_ready is None or bucket_ready > current_time():
            if waiter.ip_entry is not None:
                waiter.ip_queue.remove(waiter.ip_entry)
                waiter.ip_entry = None
                return None, bucket_ready, (waiter.ip_queue,)
            return None, bucket_ready, ()
        if waiter.ip_entry is None:
            waiter.ip_entry = waiter.ip_queue.push(waiter)
        first = waiter.ip_queue.head() is waiter
        return None, ip_ready if first else _INF, ()

    @staticmethod
    def _leave(waiter: _Waiter) -> None:
        if waiter.bucket_entry is not None:
            waiter.bucket_queue.remove(waiter.bucket_entry)
            waiter.bucket_entry = None
        if waiter.ip_entry is not None:
            waiter.ip_queue.remove(waiter.ip_entry)
            waiter.ip_entry = None

    async def _schedule_head(self, queue: _Queue) -> None:
        """Give the new head of ``queue`` its exact wake-up time (one wake-up, not a herd)."""
        memory = self._memory
        lock = self._lock
        if memory is not None:
            with lock:
                self._schedule_head_now(memory, queue)
            return
        for _ in range(3):  # the head may change while the backend answers; never spin
            with lock:
                head = queue.head()
            if head is None:
                return
            ready = await self._backend.ready(head.route.requests)
            with lock:
                if queue.head() is head and self._wake_for(head, ready):
                    return

    def _schedule_head_now(self, memory: InMemoryBackend, queue: _Queue) -> None:
        """:meth:`_schedule_head` in memory, lock held."""
        while (head := queue.head()) is not None:
            if self._wake_for(head, memory.ready_now(head.route.requests)):
                return

    @staticmethod
    def _wake_for(head: _Waiter, ready: tuple[float | None, ...]) -> bool:
        """Wake ``head`` when its buckets say it may go (``False``: its loop is gone)."""
        bucket_ready, ip_ready = ready
        queued_for_ip = head.ip_entry is not None
        if bucket_ready is None:
            # Its bucket waits for an answer: a release wakes it (or it steps out of the IP queue).
            when = -_INF if queued_for_ip else _INF
        elif bucket_ready > current_time():
            when = -_INF if queued_for_ip else bucket_ready
        elif ip_ready is None:
            when = _INF if queued_for_ip else -_INF
        else:
            when = ip_ready
        return when == _INF or head.wake_at(when)

    @staticmethod
    def _kick(queue: _Queue) -> None:
        """Wake the head of ``queue`` at once (lock held)."""
        while (head := queue.head()) is not None:
            if head.wake_at(-_INF):
                return

    async def _sleep(
        self, waiter: _Waiter, until: float | None, deadline: float | None, endpoint: Endpoint
    ) -> None:
        when = _INF if until is None else until
        for_release = when == _INF
        if deadline is not None and when >= deadline:
            now = current_time()
            if now >= deadline:
                eta = await self._eta(self._backend, waiter.route)
                with self._lock:
                    self._rejections += 1
                raise RateLimitError(
                    f"{endpoint.operation_id}: no slot within max_wait",
                    retry_after=max(eta, when if when != _INF else eta) - now,
                    local=True,
                    operation_id=endpoint.operation_id,
                )
            when = deadline
        lock = self._lock
        with lock:
            waiter.for_release = for_release
            kicked = waiter.kicked
            if kicked != _INF:
                waiter.kicked = _INF
                if kicked < when:
                    when = kicked
                if when <= current_time():
                    return  # woken before it fell asleep: look again at once
            event = waiter.event = anyio.Event()
            # The deadline on the waiter's own loop clock.
            scope = waiter.scope = anyio.CancelScope(deadline=waiter.home.deadline(when))
            waiter.until = when
        try:
            with scope:
                await event.wait()
        finally:
            with lock:
                waiter.scope = None
                waiter.event = None
                waiter.until = _INF
        with lock:
            self._wakeups += 1

    async def _finish(self, permit: Permit, grant: Grant) -> None:
        """Release ``permit``'s slots, apply what its answer taught, wake whom it concerns."""
        backend = self._backend
        if permit._sent:
            answered = permit._answered
            end: float | None = (answered if answered is not None else current_time()) + self._hold
        else:
            end = None
        feedback = permit._feedback
        learned = await backend.release(grant, end=end, feedback=feedback)
        changed = learned is not None and learned is not Learned.SAME
        if changed and learned is not None and feedback is not None:
            await self._learned(backend, permit, grant, learned, feedback)
        if permit._split is not None and feedback is not None:
            await self._split_family(permit, permit._split, feedback)
        with self._lock:
            if feedback is None and permit._answered is not None and grant.probing[0]:
                self._blind_probe(permit, grant)
        if permit._lower_to is not None:
            await self._lower_limit(grant, permit._lower_to)
        with self._lock:
            self._wake_heads(grant, end, changed)

    def _separate(self, permit: Permit, window: _Window) -> str | None:
        """The operation this answer shows to count apart from its family bucket, if any.

        One counter gives each call of a window its own count, so two answers
        of one window showing the same ``Remaining`` (above zero) for two
        operations prove that the server counts them separately. The one of
        the two that is not the bucket's own operation then moves out.
        """
        token, op = permit._token, permit.operation_id
        route = self._routes.get((token, op))
        if route is None or window.remaining <= 0:
            return None
        key = route.requests[0].key
        seen = self._families.get(key)
        if seen is None or seen[0] != window.reset_epoch:
            seen = self._families[key] = (window.reset_epoch, {})
        other = seen[1].setdefault(window.remaining, op)
        if other == op:
            return None
        return other if key == f"{token}/{op}" else op

    async def _split_family(self, permit: Permit, op: str, feedback: Feedback) -> None:
        """Give ``op``, shown to count apart (:meth:`_separate`), a bucket of its own."""
        token = permit._token
        route = self._routes.get((token, op))
        if route is None:
            return
        request = route.requests[0]
        key = f"{token}/{op}"
        if request.key == key:
            return
        moved = request._replace(key=key)
        state = self._backend.snapshot().get(request.key)
        # Its calls still in flight in the family bucket may yet land in this window.
        flying = 0 if state is None else state.open
        limit = min(feedback.limit, request.limit) if request.ceiling else feedback.limit
        await self._backend.seed(
            moved, feedback._replace(limit=limit, remaining=feedback.remaining - flying)
        )
        with self._lock:
            self._routes[(token, op)] = _Route(
                (moved, route.requests[1]), route.configured, self._queue(key), route.ip_queue
            )
        if key not in self._logged:
            self._logged.add(key)
            _logger.warning(
                "operation %s counts apart from the other versions in %s on the server: "
                "moved to bucket %s",
                op,
                request.key,
                key,
            )

    def _counted(self, grant: Grant, until: float, now: float) -> int:
        """What the window that refused ``grant``'s call (a 429 telling nothing) counted.

        The first such 429 pauses the bucket until ``until``; every call of ours
        then holding a slot (in flight, or answered within a period) may have
        been counted by the refusing window. Each 429 among them in that pause
        was not: the limit is at most the rest. Calls of an earlier window may
        still hold slots, so the figure may be high: the next 429 lowers again.
        """
        key = grant.requests[0].key
        refusal = self._refusals.get(key)
        if refusal is None or now >= refusal[0]:
            state = self._backend.snapshot().get(key)
            occupied = grant.requests[0].limit if state is None else state.occupied
            refusal = self._refusals[key] = [until, occupied, 0]
        refusal[2] += 1
        return max(1, int(refusal[1]) - int(refusal[2]))

    async def _lower_limit(self, grant: Grant, counted: int) -> None:
        """Lower the bucket's limit after a 429 that told nothing (see :meth:`_counted`).

        The bucket is paused a full period already; from then on it sends no
        more per period than the refusing window took, instead of the guess
        that drew the 429 (a window over the limit again would be a ban).
        """
        request = grant.requests[0]
        state = self._backend.snapshot().get(request.key)
        if state is None or counted >= state.limit:
            return
        until = self._backend.paused_until(request.key)
        await self._backend.seed(request, Feedback(counted, 0, until))
        _logger.log(
            logging.DEBUG if f"{request.key} lowered" in self._logged else logging.WARNING,
            "bucket %s: a 429 without Retry-After or RateLimit headers; "
            "limit lowered from %d to %d calls per period",
            request.key,
            state.limit,
            counted,
        )
        self._logged.add(f"{request.key} lowered")

    def _blind_probe(self, permit: Permit, grant: Grant) -> None:
        """A slow-start probe was answered without usable ``RateLimit-*`` headers.

        Such an answer (a 401, a proxy's error page, a stub) shows no limit, so
        it confirms nothing: the next call probes again. After
        ``_BLIND_PROBES`` (3) of them the route stops probing and trusts its
        configured limit (the bucket stays unconfirmed: an answer with headers
        still corrects it), so that a server that never sends the headers only
        costs a short slow start, not one call at a time for ever.
        """
        route = self._routes.get((permit._token, permit.operation_id))
        request = grant.requests[0]
        if route is None or not route.requests[0].probe or route.requests[0].key != request.key:
            return
        route.blind += 1
        if route.blind < _BLIND_PROBES:
            return
        bucket_request, ip_request = route.requests
        # Waiters hold the route itself: their next look at the bucket uses the new request.
        route.requests = (bucket_request._replace(probe=False), ip_request)
        route.lane = _Lane(route.requests)
        logged = f"{request.key} {request.op} blind"
        if logged not in self._logged:
            self._logged.add(logged)
            _logger.warning(
                "bucket %s: %d answers to %s without RateLimit headers; "
                "trusting the configured limit",
                request.key,
                route.blind,
                request.op,
            )

    def _wake_heads(self, grant: Grant, end: float | None, changed: bool) -> None:
        """After a release (lock held): wake the heads of the queues it concerns, if it helps."""
        queues = self._queues
        for request in grant.requests:
            queue = queues.get(request.key)
            if queue is not None and queue.size:
                # A freed slot or a new limit helps now; a new occupancy end only
                # helps a head that had no wake-up time at all. A head whose loop
                # is gone steps out, and the next one is asked.
                while (head := queue.head()) is not None and (
                    end is None or changed or head.asleep_on_release()
                ):
                    if head.wake_at(-_INF):
                        break

    async def _learned(
        self,
        backend: GovernorBackend,
        permit: Permit,
        grant: Grant,
        learned: Learned,
        feedback: Feedback,
    ) -> None:
        request = grant.requests[0]
        if learned is Learned.ADOPTED:
            if request.key not in self._logged:
                self._logged.add(request.key)
                _logger.warning(
                    "bucket %s: the server's limit %d replaces the configured %d",
                    request.key,
                    feedback.limit,
                    request.limit,
                )
            return
        # FOREIGN: this operation's server bucket is not the one we guessed.
        key = f"{request.key.split('@', 1)[0]}@{feedback.limit}"
        moved = SlotRequest(key, feedback.limit, request.op, request.probe)
        await backend.seed(moved, feedback)
        with self._lock:
            route = self._routes.get((permit._token, permit.operation_id))
            if route is not None:
                self._routes[(permit._token, permit.operation_id)] = _Route(
                    (moved, route.requests[1]), route.configured, self._queue(key), route.ip_queue
                )
            logged = key in self._logged
            self._logged.add(key)
        if not logged:
            _logger.warning(
                "operation %s shows a limit of %d, unlike the rest of %s: moved to bucket %s",
                permit.operation_id,
                feedback.limit,
                request.key,
                key,
            )


def _forget_scope(backend: GovernorBackend, scope: str) -> None:
    """Drop the buckets and queues of a collected governor from the backend it shared.

    A finalizer: it runs on whatever thread collects the governor, at any
    point, so it never waits for the lock. A thread being started collects
    garbage while the thread starting it may hold the lock and wait for it to
    start: waiting here deadlocked both. When the lock is taken, the scope is
    left for the next finalizer that gets it (a few rows kept a little longer).
    """
    shared = _SHARED.get(backend)
    if shared is None:
        return
    shared.forget.append(scope)  # atomic: no lock needed
    if not shared.lock.acquire(blocking=False):  # re-entrant: its holder gets it
        return
    try:
        scopes = tuple(shared.forget)
        shared.forget.clear()
        for table in (getattr(backend, "_buckets", None), shared.queues):
            if isinstance(table, dict):
                for key in [key for key in list(table) if key.startswith(scopes)]:
                    table.pop(key, None)
    finally:
        shared.lock.release()


def wake_waiters(backend: GovernorBackend, key: str) -> None:
    """Wake the head of ``key``'s queue in every governor of this process using ``backend``.

    A shared backend calls it when another process released a slot or showed a
    new limit: the local release that would otherwise wake the head happened
    elsewhere. The head looks again (one ``acquire``); the others keep sleeping.
    """
    shared = _SHARED.get(backend)
    if shared is None:
        return
    with shared.lock:
        queue = shared.queues.get(key)
        if queue is not None and queue.size:
            Governor._kick(queue)
