"""The governor's clock: one timeline for the whole process, whatever loop reads it.

Why one timeline. The per-IP ceiling and each token's limits belong to the
process (in truth to the host), not to an event loop: Django and Celery
threads, notebooks calling ``asyncio.run`` again and again, an asyncio thread
beside a trio thread all draw from the same buckets. The buckets store times
(when a slot frees, when a pause ends), so those times must mean the same to
every loop. Each loop's own clock will not do: trio's clock starts at a random
offset of 10^4 to 2x10^5 s, asyncio's is ``time.monotonic()``, and a test's
``MockClock`` runs at its own pace; a slot stored on one and read on another
looks long expired (the bug that sent a whole window twice) or far away.

How. The process timeline is ``time.monotonic()`` shifted by one constant,
and each loop gets an *offset* the first time the governor sees it::

    process time = loop time + offset[loop]

asyncio's and trio's real clocks advance exactly as ``time.monotonic()`` does,
so one offset per loop stays right for its whole life, for loops in sequence
and in parallel alike. Where a loop's clock is ``time.monotonic()`` under
another name, the offset is known by construction rather than measured (see
:func:`_gap`): loops in threads must agree to far less than the governor's
margin, and a thread can be preempted between two reads.

The first loop seen after :func:`reset` (or at start) anchors the timeline
with offset 0, so a program with one loop sees its own clock unchanged, and a
test on trio's ``MockClock`` keeps its virtual time (other loops running
beside a virtual one would disagree with it: virtual time is for one loop at a
time). Outside any loop the timeline reads ``time.monotonic()`` plus the
anchor's shift.

Going back to a loop's clock is needed only to sleep: a waiter's deadline on
the timeline minus its :class:`Home`'s offset. A :class:`Home` also carries
the way into its loop from another thread (``call_soon_threadsafe`` on
asyncio and uvloop, ``TrioToken.run_sync_soon`` on trio; anyio's own
``EventLoopToken`` appeared only in anyio 4.11, later than this package's
floor), which is how a release on one loop wakes a waiter on another.

The hot path (asyncio, a loop already seen) costs one running-loop lookup,
one global read and an addition: the last loop seen is kept globally, and
each thread also keeps its own (several threads, each with its own loop,
then pay one thread-local read when they alternate).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from asyncio import AbstractEventLoop, BaseEventLoop, _get_running_loop
from collections.abc import Callable
from typing import Any

__all__ = ["Home", "current_home", "current_time", "exact_gap", "reset"]

try:
    from sniffio import current_async_library_cvar as _library_cvar
    from sniffio import thread_local as _library_local
except ImportError:  # pragma: no cover - anyio works without sniffio
    _library_local = None  # type: ignore[assignment]
    _library_cvar = None  # type: ignore[assignment]

_monotonic = time.monotonic


class Home:
    """One event loop as the governor sees it: its offset, and a way in from any thread."""

    __slots__ = ("__weakref__", "_loop", "_token", "exact", "offset")

    def __init__(
        self, offset: float, loop: AbstractEventLoop | None, token: Any, *, exact: bool = False
    ) -> None:
        self.offset = offset
        # Weak: the registry's entry must not keep a finished loop (and all it held) alive,
        # or a thread pool calling asyncio.run per request would keep every loop for ever.
        self._loop = None if loop is None else _weak(loop)
        self._token = None if token is None else _weak(token)
        #: Whether ``offset`` is known by construction rather than measured.
        self.exact = exact

    def __repr__(self) -> str:
        kind = "asyncio" if self._loop is not None else "trio"
        return f"<Home {kind} offset={self.offset:.6f}>"

    def deadline(self, when: float) -> float:
        """``when`` (process timeline) on this loop's clock, never early.

        ``loop time + offset`` is rounded: the plain difference can land a hair
        before ``when``, and a waiter woken there would find its slot not yet
        free and sleep again until the same instant, for ever on a mock clock.
        """
        offset = self.offset
        local = when - offset
        while local + offset < when:
            local = math.nextafter(local, math.inf)
        return local

    def soon(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on this loop soon, from any thread; ``False`` if the loop is gone."""
        if self._loop is not None:
            loop = self._loop()
            if loop is None or loop.is_closed():
                return False
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # closed meanwhile
                return False
            return True
        token = None if self._token is None else self._token()
        if token is None:
            return False
        import trio

        try:
            token.run_sync_soon(callback)
        except trio.RunFinishedError:
            return False
        return True

    def running(self) -> bool:
        """Whether the loop runs now (an asyncio loop may be stopped and run again later).

        A trio run cannot stop while its tasks wait, so a trio home always answers yes;
        a finished run shows up in :meth:`soon`.
        """
        if self._loop is None:
            return True
        loop = self._loop()
        return loop is not None and loop.is_running()


def _weak(thing: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(thing)
    except TypeError:  # pragma: no cover - a loop class without __weakref__: kept alive
        return lambda: thing


#: A loop, the registry it was seen in, what to add to the clock read, its home, and
#: the clock to read: ``time.monotonic`` itself where the loop's offset is exact (its
#: clock is monotonic's under another name; then add the timeline's shift), else the
#: loop's own clock (then add the home's offset).
_Seen = tuple[object, object, float, Home, Callable[[], float]]

_lock = threading.Lock()
_homes: weakref.WeakKeyDictionary[object, Home] = weakref.WeakKeyDictionary()
_pinned: dict[int, tuple[object, Home]] = {}  # loops that refuse weak references
#: Process time = time.monotonic() + _shift; ``None`` until a loop anchors it.
_shift: float | None = None
_NOBODY: _Seen = (None, None, 0.0, Home(0.0, None, None), _monotonic)
#: The last loop seen by any thread (one global read on the hot path)...
_last: _Seen = _NOBODY
#: ...and by this thread (several threads, each with its own loop).
_cache = threading.local()
#: How many readings :func:`_gap` takes of a clock it knows nothing about.
_TRIES = 7


def reset() -> None:
    """Forget every loop; the next one seen anchors the timeline again.

    Only for test suites between tests (each test's loop then keeps its own
    clock as the timeline): state kept on the old timeline means nothing after.
    """
    global _homes, _shift  # the registry is replaced, so threads' caches see the change
    with _lock:
        _homes = weakref.WeakKeyDictionary()
        _pinned.clear()
        _shift = None


def _seen(key: object) -> _Seen:
    """The home of ``key`` (a loop or a trio token), registering it the first time."""
    global _last  # the one-entry cache of the hot path
    seen: _Seen = getattr(_cache, "seen", _NOBODY)
    if seen[0] is not key or seen[1] is not _homes:
        if isinstance(key, AbstractEventLoop):
            loop: AbstractEventLoop | None = key
            read = key.time
        else:
            import trio

            loop, read = None, trio.current_time
        with _lock:
            registry = _homes
            home = _register(key, loop, read)
            shift = _shift
        if home.exact:
            seen = (key, registry, shift if shift is not None else 0.0, home, _monotonic)
        else:
            seen = (key, registry, home.offset, home, read)
        _cache.seen = seen
    _last = seen
    return seen


def _register(key: object, loop: AbstractEventLoop | None, read: Callable[[], float]) -> Home:
    """``key``'s home, made the first time from its clock ``read`` (lock held)."""
    global _shift  # the anchor of the timeline, set by the first loop
    home = _homes.get(key)
    if home is not None:
        return home
    pinned = _pinned.get(id(key))
    if pinned is not None and pinned[0] is key:
        return pinned[1]
    gap, exact = _gap(loop, read)
    if _shift is None:
        _shift = -gap  # the anchor: the timeline is exactly its clock
    home = Home(gap + _shift, loop, None if loop is not None else key, exact=exact)
    try:
        _homes[key] = home
    except TypeError:  # pragma: no cover - a loop class without __weakref__
        _pinned[id(key)] = (key, home)
    return home


def _gap(loop: AbstractEventLoop | None, read: Callable[[], float]) -> tuple[float, bool]:
    """``time.monotonic()`` minus the clock ``read`` of ``loop`` (``None``: the running
    trio run), and whether that difference is exact.

    Why exact where possible. Loops in several threads share buckets, so their
    readings must agree to well under the governor's margin. A gap measured as
    two reads of two clocks is off by whatever ran between them, and a thread
    can lose the GIL there for a whole switch interval (5 ms): a loop whose
    timeline ran that much ahead would grant that much early. So the clocks
    known to be ``time.monotonic()`` get their gap by construction: asyncio's own
    loops (``BaseEventLoop.time`` is ``time.monotonic()``), uvloop (libuv's
    monotonic clock truncated to the millisecond, so the timeline reads
    ``time.monotonic()`` itself, and a deadline on the loop's clock is never
    early), and trio's ``SystemClock`` (``perf_counter()`` plus a stored offset,
    and ``perf_counter`` is ``monotonic`` where their implementations agree).
    Any other clock (a test's virtual one, an unknown loop) is measured
    between two reads of ``time.monotonic()``, keeping the narrowest of a few.
    """
    if loop is not None:
        kind = type(loop)
        if kind.time is BaseEventLoop.time or (
            kind.__module__.partition(".")[0] == "uvloop"
            and abs(loop.time() - _monotonic()) < 0.01  # the same clock, to the millisecond
        ):
            return 0.0, True
        return _measured(read)
    import trio

    clock = trio.lowlevel.current_clock()
    offset = getattr(clock, "offset", None)
    if (
        type(clock).__name__ == "SystemClock"
        and isinstance(offset, float)
        and _SAME_COUNTER
        and abs(clock.current_time() - offset - _monotonic()) < 0.01
    ):
        return -offset, True
    return _measured(read)


def _measured(read: Callable[[], float]) -> tuple[float, bool]:
    best = math.inf
    gap = 0.0
    for _ in range(_TRIES):
        before = _monotonic()
        now = read()
        after = _monotonic()
        if after - before < best:
            best = after - before
            gap = (before + after) / 2 - now
    return gap, False


#: Whether ``time.perf_counter`` (trio's system clock) is ``time.monotonic`` here.
_SAME_COUNTER = (
    time.get_clock_info("perf_counter").implementation
    == time.get_clock_info("monotonic").implementation
)


def _trio_now() -> tuple[float, Home] | None:
    try:
        import trio

        token = trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        return None
    seen = _last
    if seen[0] is not token or seen[1] is not _homes:
        seen = _seen(token)
    return seen[4]() + seen[2], seen[3]


def _idle_time() -> float:
    shift = _shift
    return _monotonic() + (0.0 if shift is None else shift)


def current_time() -> float:
    """Now on the process timeline (see the module's docstring)."""
    if _library_local is not None:
        name = _library_local.name
        if name is None:
            name = _library_cvar.get()
        if name is not None and name != "asyncio":
            found = _trio_now()
            return _idle_time() if found is None else found[0]
    loop = _get_running_loop()
    if loop is not None:
        seen = _last
        if seen[0] is not loop or seen[1] is not _homes:
            seen = _seen(loop)
        return seen[4]() + seen[2]
    return _idle_time()


def exact_gap() -> float | None:
    """``time.monotonic()`` minus :func:`current_time`, where it is known exactly.

    ``None`` when the running loop's clock was measured (a virtual clock, an
    unknown loop): the caller then measures, knowing the answer is approximate.
    """
    home = current_home()
    shift = _shift
    if home is not None and not home.exact:
        return None
    return 0.0 if shift is None else -shift


def current_home() -> Home | None:
    """The running loop's :class:`Home` (``None`` outside any loop)."""
    if _library_local is not None:
        name = _library_local.name
        if name is None:
            name = _library_cvar.get()
        if name is not None and name != "asyncio":
            found = _trio_now()
            return None if found is None else found[1]
    loop = _get_running_loop()
    if loop is None:
        return None
    seen = _last
    if seen[0] is not loop or seen[1] is not _homes:
        seen = _seen(loop)
    return seen[3]
