"""Where the governor keeps its buckets: the :class:`GovernorBackend` protocol.

A bucket is a key (``"ip"``, ``"<token fingerprint>/<group or operation>"``)
with a limit and the occupancy of its slots. The governor decides *who* may
ask (FIFO queues, deadlines, wake-ups); the backend decides *whether* a slot
is free, atomically across the keys of one call. :class:`InMemoryBackend`
keeps everything in this process; a shared backend (Redis) implements the same
methods with the same meaning so that many processes share one quota.

The occupancy model, which every backend must follow:

- a slot is taken at the grant and stays *open* while the request may still
  reach the server; an open slot blocks the bucket with no known end;
- a slot released without sending is simply freed;
- a slot whose request was sent stays occupied until the ``end`` the governor
  gives (the answer time plus one period plus the margin), so that however the
  server aligns its windows and however late the request lands, no window sees
  more than ``limit`` calls;
- but when the answer carried ``RateLimit-*`` headers (``feedback`` given to
  :meth:`~GovernorBackend.release`), the first request's slot is occupied only
  until ``feedback.reset_at`` if that is sooner: the latest time, on the
  governor's clock and margin included, at which the server window that
  counted the call can end. The IP bucket (the other requests) keeps ``end``:
  the headers speak of the token's window only. Each window then still holds at
  most ``limit`` of our calls, since every call it counted keeps its slot until
  the window is over (the governor's docstring has the proof);
- the server's ``RateLimit-Remaining`` caps the grants until its reset only
  when it shows calls that are not ours (another program on the token, see
  ``_Bucket.watch``), or after a 429; otherwise the slots account for every
  call the window counted, and a cap would count twice the calls that
  overtook the answered one on the way. A pause (after a 429) blocks the
  bucket until its end.

Since 0.2 (issue 20) a backend must apply the ``reset_at`` rule above; the
conformance suite checks it (``occupied_until_window_end``).

All times are on the governor's process timeline (``_clock.current_time``):
one monotonic clock for every thread and event loop of the process, which
each loop's clock maps onto with an offset. :class:`InMemoryBackend` is
thread-safe: one re-entrant lock guards its buckets (and the governor's
queues over them).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar, runtime_checkable

import attrs

from ._clock import current_time as _current_time
from ._errors import MAX_RETRY_AFTER as _MAX_RETRY_AFTER

__all__ = [
    "Blocked",
    "BucketState",
    "Feedback",
    "GovernorBackend",
    "Grant",
    "InMemoryBackend",
    "Learned",
    "SlotRequest",
]


#: Fraction of the limit below which a capped bucket sends one call at a time.
_ENDGAME = 0.05
#: The furthest a server's ``RateLimit-Reset`` may hold a bucket (as ``Retry-After``).
_MAX_RESET = _MAX_RETRY_AFTER
#: A ``RateLimit-Limit`` above this is nonsense (no server counts a billion calls a window;
#: test setups do use a million).
_MAX_LIMIT = 10**9
_logger = logging.getLogger("apientreprise_async.governor")
_NEG_INF = -math.inf
_NOT_PROBING = (False, False)
_tuple_new = tuple.__new__
#: How far back the timeline may seem to go before the state is taken as stale
#: (only a test suite re-anchoring the timeline between tests moves it back).
_BACKWARDS = 1.0

_P = ParamSpec("_P")
_T = TypeVar("_T")
_B = TypeVar("_B", bound="InMemoryBackend")


def _locked(
    method: Callable[Concatenate[_B, _P], _T],
) -> Callable[Concatenate[_B, _P], _T]:
    """Run ``method`` under the backend's lock (any thread may call it)."""

    @functools.wraps(method)
    def locked(self: _B, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _locked_coroutine(
    method: Callable[Concatenate[_B, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[_B, _P], Coroutine[Any, Any, _T]]:
    """:func:`_locked` for a coroutine that never suspends (held across its await)."""

    @functools.wraps(method)
    async def locked(self: _B, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self._lock:
            return await method(self, *args, **kwargs)

    return locked


class SlotRequest(NamedTuple):
    """One bucket a call needs a slot in.

    Attributes:
        key: the bucket's name.
        limit: the configured limit, used until the server tells otherwise.
        op: the operation id the call is for (``None`` for the IP bucket).
        probe: slow start applies: until the bucket, then the operation,
            has had an answer showing its real limit, one call at a time.
        ceiling: ``limit`` was set by the user: the server's limit may lower
            the bucket's, never raise it above ``limit``.
    """

    key: str
    limit: int
    op: str | None = None
    probe: bool = False
    ceiling: bool = False


class Grant(NamedTuple):
    """Slots taken for one call, one per request, all or none.

    ``marks`` let feedback find, per bucket, the calls that may reach the
    server after this one: those open at its grant and those granted since.
    """

    requests: tuple[SlotRequest, ...]
    probing: tuple[bool, ...]
    marks: tuple[int, ...]


class Blocked(NamedTuple):
    """No grant; per request, the earliest time it could be granted.

    ``None`` means that the bucket waits for a call in flight to end (its
    occupancy is not known yet), so only a release can tell.
    """

    ready: tuple[float | None, ...]


class Feedback(NamedTuple):
    """What one answer's ``RateLimit-*`` headers said, on the governor's clock.

    ``reset_at`` is the latest time the server window that counted the call
    can end (margin included): the call's slot in the first bucket is free
    from then on, however long ``end`` says.

    ``opened_at`` is when the server's window opened (its reset less one
    period and the margin), and ``counted_from`` the occupancy end (see
    :meth:`GovernorBackend.release`) of a call answered at that moment: calls
    ending earlier were answered before the window, so it cannot count them.
    With both, a backend can tell the window's use by others (another program
    on the same token) from its own; ``-inf`` and ``inf`` (the defaults) mean
    unknown. ``remaining`` is ``-1`` after a 429: the window counted at least
    one call past its limit.
    """

    limit: int
    remaining: int
    reset_at: float
    opened_at: float = -math.inf
    counted_from: float = math.inf


def _nonsense_limit(limit: int) -> bool:
    """A ``RateLimit-Limit`` no server means: zero, negative or absurdly large."""
    return limit <= 0 or limit > _MAX_LIMIT


def _bounded_reset(key: str, feedback: Feedback, now: float) -> Feedback:
    """``feedback`` with its reset at most :data:`_MAX_RESET` away (logged when cut)."""
    if feedback.reset_at <= now + _MAX_RESET:
        return feedback
    _logger.warning(
        "bucket %s: RateLimit-Reset %.0f s away; holding the bucket at most %.0f s",
        key,
        feedback.reset_at - now,
        _MAX_RESET,
    )
    return feedback._replace(reset_at=now + _MAX_RESET)


def _nonsense_pause(key: str, feedback: Feedback, now: float) -> float:
    """The pause for an answer whose limit is nonsense: until its (bounded) reset.

    Such an answer shows nothing usable: the bucket keeps the limit it had
    and waits for the server's next window, never longer than :data:`_MAX_RESET`.
    """
    until = _bounded_reset(key, feedback, now).reset_at
    _logger.warning(
        "bucket %s: the server answered RateLimit-Limit %d, which means nothing; "
        "keeping the limit in force and pausing %.3f s until its reset",
        key,
        feedback.limit,
        max(until - now, 0.0),
    )
    return until


class Learned(enum.Enum):
    """How a bucket took an answer's feedback."""

    SAME = "same"
    """The limit was the one in force."""
    ADOPTED = "adopted"
    """The bucket took the server's limit in place of its configured one."""
    FOREIGN = "foreign"
    """The bucket's limit was already shown by other operations and this one
    shows another: the operation belongs to another server bucket."""


@attrs.frozen
class BucketState:
    """A read-only view of one bucket, for snapshots."""

    key: str
    limit: int
    confirmed: bool
    open: int
    occupied: int
    next_free: float | None
    paused_until: float
    cap_remaining: int | None
    cap_until: float
    outside_rate: float = 0.0
    """Calls per second by others on the same token, as the headers showed them."""


@runtime_checkable
class GovernorBackend(Protocol):
    """The state the governor needs, updated atomically per call.

    Coroutines may do I/O (a shared store); :meth:`pause` and
    :meth:`paused_until` are synchronous because a 429 must stop this process
    at once: a shared backend records the pause locally there and publishes it
    on its next coroutine.
    """

    async def acquire(self, requests: Sequence[SlotRequest]) -> Grant | Blocked:
        """Take one slot in every bucket of ``requests`` if all are free now, else none."""
        ...

    async def ready(self, requests: Sequence[SlotRequest]) -> tuple[float | None, ...]:
        """Earliest grant time per request, without taking anything."""
        ...

    async def release(
        self, grant: Grant, *, end: float | None, feedback: Feedback | None = None
    ) -> Learned | None:
        """Give the slots of ``grant`` back.

        Args:
            grant: what :meth:`acquire` returned.
            end: ``None`` if the request never left (the slots are freed);
                otherwise the time until which the slots stay occupied.
            feedback: the answer's headers, applied to the first request's
                bucket before its slot is released.

        Returns:
            How the feedback was taken (``None`` without feedback).
        """
        ...

    async def seed(self, request: SlotRequest, feedback: Feedback) -> None:
        """Create (or correct) a bucket whose real limit is already known."""
        ...

    def pause(self, key: str, until: float) -> None:
        """Grant nothing in ``key`` before ``until``."""
        ...

    def paused_until(self, key: str) -> float:
        """End of ``key``'s pause (``-inf`` when none)."""
        ...

    async def estimate(self, request: SlotRequest, position: int, hold: float) -> float:
        """When a call with ``position`` calls queued ahead of it would get a slot.

        Calls in flight are assumed to end now (each then holds its slot for
        ``hold``), so the estimate is a lower bound.
        """
        ...

    def snapshot(self) -> Mapping[str, BucketState]:
        """What this process knows of every bucket."""
        ...


class _Bucket:
    """One bucket's state in memory.

    ``ends`` is sorted: occupancy ends of calls already answered. Answers come
    back roughly in order, so ``insort`` appends in practice.
    """

    __slots__ = (
        "cap_at",
        "cap_left",
        "cap_until",
        "confirmed",
        "ends",
        "granted",
        "known",
        "limit",
        "open",
        "out_burst",
        "out_count",
        "out_exact",
        "out_exact_at",
        "out_prev",
        "out_rate",
        "out_span",
        "out_window",
        "outside",
        "paused",
        "probing",
    )

    def __init__(self, limit: int, *, confirmed: bool) -> None:
        self.limit = limit
        self.confirmed = confirmed
        self.open = 0
        self.granted = 0
        self.ends: list[float] = []
        self.known: set[str] = set()
        self.probing: set[str] = set()
        self.cap_left = 0
        self.cap_until = -math.inf
        self.cap_at = -math.inf  # when the answer that set cap_left came
        self.paused = -math.inf
        # Use of the token by others (another program), seen only in the headers.
        # Once seen, a window nobody answered about yet gets one probe call first.
        self.outside = False
        self.out_count = 0  # others' calls in the window of out_window (a lower bound)
        self.out_window = -math.inf  # the reset of that window
        self.out_rate = 0.0  # their calls per second in that window
        self.out_prev = 0.0  # the same, in the window before
        self.out_span = 0.0  # the length of a server window (with margins)
        self.out_burst = 0.0  # most calls others made at once, beyond their rate
        self.out_exact = 0  # others' calls at an answer when nothing else of ours flew
        self.out_exact_at = -math.inf  # and when it came

    def quick(self, request: SlotRequest) -> bool:
        """Free without looking at the clock: the common uncontended case."""
        if request.probe and (not self.confirmed or request.op not in self.known):
            return False
        return (
            self.open + len(self.ends) < self.limit
            and self.paused == -math.inf
            and self.cap_until == -math.inf
        )

    def ready(self, now: float, request: SlotRequest) -> float | None:
        """Earliest time a slot frees for ``request`` (``None``: waits for a release)."""
        op = request.op
        if request.probe and op is not None:
            if not self.confirmed:
                if self.open:
                    return None
            elif op not in self.known and op in self.probing:
                return None
        free = self.limit - self.open
        if free <= 0:
            return None
        ends = self.ends
        if ends and ends[0] <= now:
            del ends[: bisect_right(ends, now)]
        # A new call fits once at most free-1 ended slots still overlap it.
        extra = len(ends) - (free - 1)
        when = ends[extra - 1] if extra > 0 else now
        if self.cap_until > now:
            left = self.cap_left
            if left <= 0:
                when = max(when, self.cap_until)
            elif self.open and self.outside:
                # Others use the token: the window's last slots may be theirs already.
                endgame = self.limit * _ENDGAME + 1 + self.out_burst
                age = now - self.cap_at
                # Others may have called since the answer that set the cap.
                stale = self.outside_rate() * age
                if age > _ENDGAME * self.out_span > 0:
                    stale = max(stale, endgame)  # too old a word: ask again first
                if left - stale <= endgame or 2 * stale > endgame:
                    # The last slots of a window the server says are nearly used up
                    # (or an old word on it while others use the token): one call at
                    # a time, each reading Remaining anew, so that another user of the
                    # token costs at most the one 429 that then pauses the bucket.
                    return None
        elif self.outside:
            # A window whose use by others is unknown yet: one probe call, the rest
            # wait for its answer (slow start, once per window).
            if self.open:
                return None
        elif self.cap_until != -math.inf:
            self.cap_until = -math.inf
        if self.paused > when:
            when = self.paused
        elif self.paused != -math.inf and self.paused <= now:
            self.paused = -math.inf
        return when

    def take(self, request: SlotRequest, now: float | None) -> tuple[bool, int]:
        """Occupy one slot; tell whether the call probes its operation, and its mark."""
        mark = self.granted - self.open
        self.open += 1
        self.granted += 1
        if now is not None and self.cap_until > now:
            self.cap_left -= 1
        op = request.op
        if request.probe and op is not None and op not in self.known:
            self.probing.add(op)
            return True, mark
        return False, mark

    def learn(self, request: SlotRequest, feedback: Feedback, now: float, mark: int) -> Learned:
        """Take an answer's headers into account (this call's slot still open).

        A nonsense limit (0, negative, absurd) is never adopted, since a limit
        of 0 would block the bucket for good: the bucket pauses until the
        answer's reset, at most :data:`_MAX_RESET` away, and keeps its limit.
        """
        if _nonsense_limit(feedback.limit):
            until = _nonsense_pause(request.key, feedback, now)
            if until > self.paused:
                self.paused = until
            return Learned.SAME
        feedback = _bounded_reset(request.key, feedback, now)
        op = request.op
        outcome = Learned.SAME
        limit = feedback.limit
        if request.ceiling and limit > request.limit:
            limit = request.limit  # the user keeps room for others: never more than asked
        if op is not None and limit != self.limit:
            if self.confirmed and op not in self.known and self.known:
                return Learned.FOREIGN
            self.limit = max(limit, 0)
            outcome = Learned.ADOPTED
        self.confirmed = True
        if op is not None:
            self.known.add(op)
            self.probing.discard(op)
        self.watch(feedback, now)
        if self.outside or feedback.remaining < 0:
            # Calls open at this one's grant, or granted since, may reach the server after it.
            self.cap(feedback, now, others=self.granted - 1 - mark)
        # Otherwise every call the server counted is one of ours, and the slots
        # already hold each until its window ends: a cap would only count twice
        # the calls that overtook this one on the way.
        return outcome

    def release(self, end: float) -> None:
        """Record a sent call's occupancy end (its slot already closed)."""
        ends = self.ends
        if not ends or end >= ends[-1]:
            ends.append(end)
        else:
            insort(ends, end)

    def outside_rate(self) -> float:
        """Others' calls per second on this bucket's token (the higher of two windows)."""
        return max(self.out_rate, self.out_prev)

    def watch(self, feedback: Feedback, now: float) -> None:
        """Tell from ``Remaining`` how much of the server's window others used.

        Our calls that may count in it are those in flight and those answered
        since it opened; whatever else it counted is someone else's (a lower
        bound, exact once our calls have landed).
        """
        opened = feedback.opened_at
        reset = feedback.reset_at
        if opened == -math.inf or reset <= now:
            return
        span = self.out_span = reset - opened
        if abs(reset - self.out_window) >= 0.5 * span:
            if reset < self.out_window:
                return  # a late answer from a window already over
            self.out_prev = self.out_rate
            self.out_window = reset
            self.out_count = 0
            self.out_rate = 0.0
            self.out_exact_at = -math.inf
            self.out_burst *= 0.5  # forget slowly a burst not seen again
        ends = self.ends
        ours = self.open + len(ends) - bisect_left(ends, feedback.counted_from)
        seen = feedback.limit - feedback.remaining - ours
        if now - self.out_exact_at <= _ENDGAME * span:
            # Shortly after an exact count, what others did beyond their rate: a burst.
            burst = seen - self.out_exact - self.outside_rate() * (now - self.out_exact_at)
            if burst > self.out_burst:
                self.out_burst = burst
        if self.open == 1:
            # This call alone in flight: every call of ours has landed, the count is exact.
            self.out_exact = seen
            self.out_exact_at = now
        if seen > self.out_count:
            self.out_count = seen
            self.outside = True
        if self.out_count:
            # Early in a window few calls tell little: measure over a tenth of it at least.
            self.out_rate = self.out_count / max(now - opened, 0.1 * span)

    def cap(self, feedback: Feedback, now: float, *, others: int) -> None:
        """Apply ``Remaining`` as a cap until the reset.

        ``others`` calls may reach the server after the answered one: assume
        none of them was counted yet (subtract them), which can only be stricter.
        """
        if feedback.reset_at <= now:
            return
        left = feedback.remaining - others
        if self.cap_until > now and abs(feedback.reset_at - self.cap_until) < 0.5 * (
            feedback.reset_at - now
        ):
            # Same server window. Each answer gives a sound bound on its own, so the
            # loosest one is safe (less what others used since); keeping the lowest
            # would pile up their slack.
            used = self.outside_rate() * (now - self.cap_at) if self.outside else 0.0
            if left >= self.cap_left - used:
                self.cap_left = left
                self.cap_at = now
        elif feedback.reset_at > self.cap_until:
            self.cap_until = feedback.reset_at
            self.cap_left = left
            self.cap_at = now

    def estimate(self, now: float, position: int, hold: float) -> float:
        """When a call with ``position`` calls ahead would get a slot (a lower bound)."""
        limit = max(self.limit, 1)
        ends = [e for e in self.ends if e > now]
        frees = [now] * max(limit - self.open - len(ends), 0) + ends
        frees += [now + hold] * self.open
        frees.sort()
        rounds, index = divmod(position, limit)
        when = frees[min(index, len(frees) - 1)] + rounds * hold
        if self.cap_until > now and position >= self.cap_left:
            when = max(when, self.cap_until)
        return max(when, self.paused, now)

    def view(self, key: str, now: float) -> BucketState:
        """Freeze the state for a snapshot."""
        next_free = self.ready(now, SlotRequest(key, self.limit))
        capped = self.cap_until > now
        return BucketState(
            key=key,
            limit=self.limit,
            confirmed=self.confirmed,
            open=self.open,
            occupied=self.open + len(self.ends),
            next_free=next_free,
            paused_until=self.paused,
            cap_remaining=self.cap_left if capped else None,
            cap_until=self.cap_until if capped else -math.inf,
            outside_rate=self.outside_rate() if self.outside else 0.0,
        )


class _Lane:
    """Two requests (a bucket and the IP bucket) and their buckets, found once.

    Valid while its backend's generation is the same: buckets are only ever
    forgotten all together (:meth:`InMemoryBackend.clear`, a new event loop).
    """

    __slots__ = ("generation", "one", "requests", "two")

    def __init__(self, requests: tuple[SlotRequest, ...]) -> None:
        self.requests = requests
        self.generation = -1
        self.one: _Bucket = _NO_BUCKET
        self.two: _Bucket = _NO_BUCKET


_NO_BUCKET = _Bucket(0, confirmed=True)


class InMemoryBackend:
    """Buckets held in this process (the default).

    Every :class:`~apientreprise_async.Governor` built without a backend
    shares the process-wide one, hence one IP bucket per process. Safe to use
    from any thread and any event loop: a lock guards every method.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        # Re-entrant: the governor holds it around its queues and calls methods that take it.
        self._lock = threading.RLock()
        self._buckets: dict[str, _Bucket] = {}
        self._generation = 0  # bumped whenever buckets are forgotten (see _Lane)
        self._last = -math.inf
        #: The latest end of any pause ever set (``-inf``: none), so that a
        #: permit can skip looking for one.
        self._paused_any = -math.inf

    def __repr__(self) -> str:
        return f"<InMemoryBackend buckets={len(self._buckets)}>"

    @_locked
    def clear(self) -> None:
        """Forget every bucket (between tests)."""
        self._buckets.clear()
        self._generation += 1
        self._last = -math.inf
        self._paused_any = -math.inf

    def _now(self) -> float:
        now = _current_time()
        last = self._last
        if now < last:
            if now > last - _BACKWARDS:
                # Two loops' offsets to the timeline differ by a few microseconds:
                # never let time go back, or a slot would seem to free twice.
                return last
            # The timeline was re-anchored (a test suite between tests): the old
            # times mean nothing now.
            self._buckets.clear()
            self._generation += 1
            self._paused_any = -math.inf
        self._last = now
        return now

    def _bucket(self, request: SlotRequest) -> _Bucket:
        bucket = self._buckets.get(request.key)
        if bucket is None:
            bucket = _Bucket(request.limit, confirmed=request.op is None or not request.probe)
            self._buckets[request.key] = bucket
        elif not bucket.confirmed and request.limit < bucket.limit:
            # Two governors configured differently share the key: the stricter guess wins.
            bucket.limit = request.limit
        return bucket

    @_locked_coroutine
    async def acquire(self, requests: Sequence[SlotRequest]) -> Grant | Blocked:
        """Take one slot in every bucket of ``requests`` if all are free now, else none."""
        return self.acquire_now(requests)

    @_locked
    def acquire_now(self, requests: Sequence[SlotRequest]) -> Grant | Blocked:
        """:meth:`acquire`, synchronously (nothing in memory needs to wait).

        The governor calls it directly for an :class:`InMemoryBackend`, which
        saves a coroutine per call; the protocol stays asynchronous for shared
        backends.
        """
        if len(requests) == 2:
            return self._acquire_lane(_Lane(tuple(requests)))
        table = self._buckets
        buckets = [table.get(r.key) or self._bucket(r) for r in requests]
        if all(b.quick(r) for b, r in zip(buckets, requests, strict=True)):
            marks = []
            for bucket in buckets:
                marks.append(bucket.granted - bucket.open)
                bucket.open += 1
                bucket.granted += 1
            return Grant(tuple(requests), (False,) * len(buckets), tuple(marks))
        return self._acquire(requests, buckets)

    def _acquire_lane(self, lane: _Lane) -> Grant | Blocked:
        """:meth:`acquire_now` for the two buckets of ``lane``, found once."""
        if lane.generation != self._generation:
            first, second = lane.requests
            table = self._buckets
            lane.one = table.get(first.key) or self._bucket(first)
            lane.two = table.get(second.key) or self._bucket(second)
            lane.generation = self._generation
        one = lane.one
        two = lane.two
        first, second = requests = lane.requests
        # Both free without looking at the clock (_Bucket.quick, inlined).
        if (
            one.open + len(one.ends) < one.limit
            and two.open + len(two.ends) < two.limit
            and one.paused == _NEG_INF
            and two.paused == _NEG_INF
            and one.cap_until == _NEG_INF
            and two.cap_until == _NEG_INF
            and (not first.probe or (one.confirmed and first.op in one.known))
            and (not second.probe or (two.confirmed and second.op in two.known))
        ):
            marks = (one.granted - one.open, two.granted - two.open)
            one.open += 1
            one.granted += 1
            two.open += 1
            two.granted += 1
            # tuple.__new__ skips the NamedTuple's Python-level __new__ (hot path).
            return _tuple_new(Grant, (requests, _NOT_PROBING, marks))
        return self._acquire(requests, [one, two])

    def _acquire(self, requests: Sequence[SlotRequest], buckets: list[_Bucket]) -> Grant | Blocked:
        now = self._now()
        ready = tuple(b.ready(now, r) for b, r in zip(buckets, requests, strict=True))
        for when in ready:
            if when is None or when > now:
                return Blocked(ready)
        taken = [b.take(r, now) for b, r in zip(buckets, requests, strict=True)]
        return Grant(tuple(requests), tuple(t[0] for t in taken), tuple(t[1] for t in taken))

    async def ready(self, requests: Sequence[SlotRequest]) -> tuple[float | None, ...]:
        """Earliest grant time per request, without taking anything."""
        return self.ready_now(requests)

    @_locked
    def ready_now(self, requests: Sequence[SlotRequest]) -> tuple[float | None, ...]:
        """:meth:`ready`, synchronously (see :meth:`acquire_now`)."""
        now = self._now()
        return tuple(self._bucket(r).ready(now, r) for r in requests)

    async def release(
        self, grant: Grant, *, end: float | None, feedback: Feedback | None = None
    ) -> Learned | None:
        """Give the slots of ``grant`` back (see :class:`GovernorBackend`)."""
        return self.release_now(grant, end=end, feedback=feedback)

    @_locked
    def release_now(
        self, grant: Grant, *, end: float | None, feedback: Feedback | None = None
    ) -> Learned | None:
        """:meth:`release`, synchronously (see :meth:`acquire_now`)."""
        if end is not None and feedback is None:
            self._release_sent(grant, end)
            return None
        return self._release(grant, end, feedback)

    def _release_sent(self, grant: Grant, end: float, lane: _Lane | None = None) -> None:
        """:meth:`release_now` of a sent call without feedback: the governor's hot path.

        ``lane``: the lane the grant came from, if any (its buckets need no lookup).
        """
        requests = grant.requests
        probing = grant.probing
        if len(requests) != 2 or probing[0] or probing[1]:
            self._release(grant, end, None)
            return
        # Unrolled for the governor's two buckets.
        if lane is not None and lane.requests is requests and lane.generation == self._generation:
            one = lane.one
            two = lane.two
        else:
            first, second = requests
            table = self._buckets
            one = table[first.key]
            two = table[second.key]
        one.open -= 1
        ends = one.ends
        if not ends or end >= ends[-1]:
            ends.append(end)
        else:
            insort(ends, end)
        two.open -= 1
        ends = two.ends
        if not ends or end >= ends[-1]:
            ends.append(end)
        else:
            insort(ends, end)

    def _release(
        self, grant: Grant, end: float | None, feedback: Feedback | None
    ) -> Learned | None:
        learned: Learned | None = None
        now = -math.inf
        if feedback is not None or end is None:
            now = self._now()
        for index, request in enumerate(grant.requests):
            bucket = self._buckets[request.key]
            occupied = end
            if index == 0 and feedback is not None:
                learned = bucket.learn(request, feedback, now, grant.marks[0])
                if bucket.paused > self._paused_any:
                    self._paused_any = bucket.paused  # a nonsense limit pauses (see learn)
                if (
                    end is not None
                    and feedback.reset_at < end
                    and not _nonsense_limit(feedback.limit)
                ):
                    # The window that counted the call ends then: so does its occupancy.
                    occupied = feedback.reset_at
            if grant.probing[index] and request.op is not None:
                # Without an answer showing the limit, the next call probes again.
                bucket.probing.discard(request.op)
            bucket.open -= 1
            if occupied is None:
                if bucket.cap_until > now:
                    bucket.cap_left += 1  # never reached the server: refund the cap
            else:
                bucket.release(occupied)
        return learned

    @_locked_coroutine
    async def seed(self, request: SlotRequest, feedback: Feedback) -> None:
        """Create (or correct) a bucket whose real limit is already known."""
        bucket = self._bucket(request)
        now = self._now()
        if _nonsense_limit(feedback.limit):
            self.pause(request.key, _nonsense_pause(request.key, feedback, now))
            return
        feedback = _bounded_reset(request.key, feedback, now)
        bucket.limit = feedback.limit
        bucket.confirmed = True
        if request.op is not None:
            bucket.known.add(request.op)
        bucket.cap(feedback, now, others=bucket.open)

    @_locked
    def pause(self, key: str, until: float) -> None:
        """Grant nothing in ``key`` before ``until``."""
        bucket = self._buckets.get(key)
        if bucket is not None and until > bucket.paused:
            bucket.paused = until
            if until > self._paused_any:
                self._paused_any = until

    def paused_until(self, key: str) -> float:
        """End of ``key``'s pause (``-inf`` when none)."""
        bucket = self._buckets.get(key)
        return -math.inf if bucket is None else bucket.paused

    @_locked_coroutine
    async def estimate(self, request: SlotRequest, position: int, hold: float) -> float:
        """When a call with ``position`` calls ahead would get a slot (a lower bound)."""
        return self._bucket(request).estimate(self._now(), position, hold)

    @_locked
    def snapshot(self) -> Mapping[str, BucketState]:
        """What this process knows of every bucket."""
        now = self._now()
        return {key: bucket.view(key, now) for key, bucket in self._buckets.items()}
