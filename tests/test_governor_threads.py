"""One governor for the whole process: threads, several event loops, loops that end.

These run in scaled real time (periods of a tenth of a second): several loops
in several threads cannot share a mock clock. Send times are read from
``time.monotonic()``, which every thread shares, and checked against the rule
the server enforces: any ``limit + 1`` sends of one bucket span at least one
period plus the margin.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import trio
import trio.lowlevel

from apientreprise_async import _clock
from apientreprise_async._governor import Governor, Limits, default_governor
from apientreprise_async.backends import InMemoryBackend

from ._fake_throttle import json_endpoint

ENDPOINT = json_endpoint("op_threads")
PERIOD = 0.1
HOLD = PERIOD * 1.005
BACKENDS = ("asyncio", "trio")


def governor(limit: int, *, ip: int = 1000) -> Governor:
    """A governor of its own with a small JSON limit and a tenth-of-a-second period."""
    limits = Limits(
        groups={"json_resources_entreprise": limit}, ip=ip, period=PERIOD, slow_start=False
    )
    return Governor(limits, backend=InMemoryBackend())


def check_spacing(sends: list[float], limit: int, hold: float) -> None:
    """Any ``limit + 1`` consecutive sends span at least ``hold``."""
    sends = sorted(sends)
    for first, last in zip(sends, sends[limit:], strict=False):
        assert last - first >= hold - 1e-6, (limit, sends)


async def one_call(gov: Governor, sends: list[float], *, token: str = "tok") -> None:
    """A call answered at once: its slot stays taken one hold after the answer."""
    async with gov.permit(token, ENDPOINT) as permit:
        permit.sending()
        sends.append(time.monotonic())
        await anyio.lowlevel.checkpoint()
        permit.observe(200, {})


def run_in_threads(targets: list[Callable[[], None]], timeout: float = 20.0) -> None:
    """Start every target in a thread of its own, join them all, re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported to the test below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a thread never finished: a waiter was stranded"
    if errors:
        raise errors[0]


def on(backend: str, func: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A thread target running ``func`` in a new event loop of ``backend`` (or uvloop)."""
    if backend == "uvloop":
        return lambda: anyio.run(func, backend="asyncio", backend_options={"use_uvloop": True})
    return lambda: anyio.run(func, backend=backend)


@pytest.mark.parametrize(("first", "second"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_loops_in_sequence_see_the_same_slots(first: str, second: str) -> None:
    """A second loop's calls wait for the slots the first loop's calls still hold.

    trio's clock starts at a random offset from asyncio's: on per-loop times the
    second loop would see the first one's slots as long expired and send a
    second window's worth at once.
    """
    gov = governor(3)
    sends: list[float] = []

    async def three() -> None:
        for _ in range(3):
            await one_call(gov, sends)

    anyio.run(three, backend=first)
    anyio.run(three, backend=second)
    assert 6 == len(sends)
    check_spacing(sends, 3, HOLD)


def test_default_governor_is_one_for_every_thread_and_loop() -> None:
    """Threads on asyncio and on trio, each with its own loop, draw from one bucket."""
    gov = default_governor()
    default_limits = gov.limits
    gov.limits = Limits(groups={"json_resources_entreprise": 3}, period=PERIOD, slow_start=False)
    sends: list[float] = []

    async def four() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one_call, gov, sends)

    run_in_threads([on(BACKENDS[i % 2], four) for i in range(4)])
    assert 16 == len(sends)
    check_spacing(sends, 3, HOLD)
    counters = gov.counters
    gov.limits = default_limits  # resets keep a configured default governor's limits
    assert 16 == counters.grants
    assert counters.waits > 0


def test_many_asyncio_run_threads_share_the_ip_bucket() -> None:
    """Six threads calling ``asyncio.run`` over and over, three tokens, one IP ceiling."""
    gov = governor(100, ip=4)
    sends: list[float] = []

    async def two(token: str) -> None:
        await asyncio.gather(one_call(gov, sends, token=token), one_call(gov, sends, token=token))

    def target(index: int) -> Callable[[], None]:
        return lambda: [asyncio.run(two(f"t{index % 3}")) for _ in range(2)] and None

    run_in_threads([target(i) for i in range(6)])
    assert 24 == len(sends)
    check_spacing(sends, 4, HOLD)


def _wait_queued(gov: Governor, count: int) -> None:
    """Until ``count`` calls queue on the JSON bucket (a short poll, in the test only)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        buckets = gov.snapshot().buckets
        bucket = buckets.get("tok/json_resources_entreprise")
        if bucket is not None and bucket.queued >= count:
            return
        time.sleep(0.002)
    raise AssertionError(f"never saw {count} calls queued")


class Holder:
    """A call holding the bucket's only slot, in a thread of its own, until told to leave."""

    def __init__(self, gov: Governor, *, send: bool) -> None:
        self.gov = gov
        self.send = send
        self.granted = threading.Event()
        self.leave = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._hold()), daemon=True)
        self.thread.start()
        assert self.granted.wait(5)

    async def _hold(self) -> None:
        async with self.gov.permit("tok", ENDPOINT) as permit:
            if self.send:
                permit.sending()
            self.granted.set()
            await anyio.to_thread.run_sync(self.leave.wait)
            if self.send:
                permit.observe(200, {})

    def release(self) -> None:
        self.leave.set()
        self.thread.join(5)


def test_fifo_across_loops() -> None:
    """Calls queued from four loops (asyncio and trio alternately) are granted in arrival order."""
    gov = governor(1)
    holder = Holder(gov, send=False)
    order: list[int] = []

    def queued_call(index: int) -> Callable[[], Coroutine[Any, Any, None]]:
        async def call() -> None:
            async with gov.permit("tok", ENDPOINT):
                order.append(index)  # left unsent: the slot frees at once for the next

        return call

    threads = []
    for index in range(4):
        thread = threading.Thread(target=on(BACKENDS[index % 2], queued_call(index)), daemon=True)
        thread.start()
        threads.append(thread)
        _wait_queued(gov, index + 1)
    holder.release()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert [0, 1, 2, 3] == order
    assert 4 == gov.counters.waits


def test_a_loop_cancelled_while_at_the_head_passes_the_turn_on() -> None:
    """The head's loop ends (its task cancelled): the next waiter, on trio, is promoted."""
    gov = governor(1)
    holder = Holder(gov, send=True)
    leaving = threading.Event()
    granted: list[str] = []

    async def head() -> None:
        with anyio.move_on_after(30) as scope:
            waiting = asyncio.ensure_future(_permit(gov, granted, "head"))
            await anyio.to_thread.run_sync(leaving.wait)
            waiting.cancel()  # the loop is about to end: its waiter leaves
            scope.cancel()

    async def second() -> None:
        await _permit(gov, granted, "second")

    head_thread = threading.Thread(target=lambda: asyncio.run(head()), daemon=True)
    head_thread.start()
    _wait_queued(gov, 1)
    second_thread = threading.Thread(target=on("trio", second), daemon=True)
    second_thread.start()
    _wait_queued(gov, 2)
    leaving.set()
    head_thread.join(5)
    holder.release()
    second_thread.join(5)
    assert not second_thread.is_alive()
    assert ["second"] == granted


def test_a_loop_stopped_with_a_waiter_strands_nobody() -> None:
    """A loop stopped and closed with its task still queued: the waiters behind it go on."""
    gov = governor(1)
    holder = Holder(gov, send=False)
    granted: list[str] = []
    stopped = threading.Event()

    def abandoned() -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(_permit(gov, granted, "abandoned"))
        loop.run_until_complete(asyncio.sleep(0.02))  # returns with that task still queued
        assert not task.done()
        stopped.set()
        time.sleep(0.2)  # stopped, not closed: a loop that could run again
        loop.close()

    abandoned_thread = threading.Thread(target=abandoned, daemon=True)
    abandoned_thread.start()
    _wait_queued(gov, 1)
    second = threading.Thread(
        target=on("trio", lambda: _permit(gov, granted, "second")), daemon=True
    )
    second.start()
    _wait_queued(gov, 2)
    assert stopped.wait(5)
    holder.release()  # the head's loop is stopped: it steps out, the second is granted
    second.join(5)
    assert not second.is_alive()
    assert ["second"] == granted
    abandoned_thread.join(5)


async def _permit(gov: Governor, granted: list[str], name: str) -> None:
    async with gov.permit("tok", ENDPOINT):
        granted.append(name)


def test_a_call_in_flight_on_a_closed_loop_is_released_conservatively() -> None:
    """A loop closed with a call in flight (its task never cancelled): once Python destroys the
    task, the slot is released as if answered then, and a waiter on another loop goes on."""
    gov = governor(1)
    started = threading.Event()

    async def in_flight() -> None:
        async with gov.permit("tok", ENDPOINT) as permit:
            permit.sending()
            started.set()
            await asyncio.Event().wait()  # never answered

    def abandoned() -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(in_flight())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not task.done()
        loop.close()  # the task is dropped, not cancelled

    thread = threading.Thread(target=abandoned)
    thread.start()
    thread.join(5)
    assert started.is_set()
    granted: list[str] = []
    waiter = threading.Thread(target=on("trio", lambda: _permit(gov, granted, "next")))
    waiter.start()
    _wait_queued(gov, 1)
    released = time.monotonic()
    gc.collect()  # what the interpreter does on its own soon after
    waiter.join(5)
    assert ["next"] == granted
    bucket = gov.snapshot().buckets["tok/json_resources_entreprise"]
    assert 0 == bucket.in_flight
    # Occupied one hold from the release, as for a call answered at that moment.
    assert time.monotonic() - released >= HOLD - 0.02


def test_a_reset_keeps_the_default_governors_limits() -> None:
    """Between tests the state goes, the configuration stays (a conftest may set it once)."""
    from apientreprise_async.testing import reset_default_governor

    configured = Limits(period=1.0)
    default_limits = default_governor().limits
    default_governor().limits = configured
    try:
        asyncio.run(one_call(default_governor(), []))
        assert 1 == default_governor().counters.grants
        reset_default_governor()
        assert configured == default_governor().limits
        assert 0 == default_governor().counters.grants
        assert {} == dict(default_governor().snapshot().buckets)
    finally:
        default_governor().limits = default_limits


def test_a_governor_collected_on_a_thread_another_waits_for_never_deadlocks() -> None:
    """Its finalizer may run on any thread, even one started under the lock (the host's
    sharing thread was): it must not wait for that lock; the buckets go a little later."""
    from apientreprise_async._governor import default_backend

    backend = default_backend()
    gov: Governor | None = Governor(Limits(period=1.0))
    assert gov is not None
    scope = gov._scope

    async def one() -> None:
        assert gov is not None
        async with gov.permit("tok", ENDPOINT) as permit:
            permit.sending()

    anyio.run(one)
    assert [key for key in backend._buckets if key.startswith(scope)]
    lock = gov._lock

    def collect() -> None:
        nonlocal gov
        gov = None
        gc.collect()

    with lock:  # as a thread starting another under the lock, waiting for it
        collector = threading.Thread(target=collect)
        collector.start()
        collector.join(5)
        assert not collector.is_alive(), "the finalizer waited for the lock"
    Governor(Limits(period=1.0))  # collected at once: its finalizer drops what was left behind
    assert not [key for key in backend._buckets if key.startswith(scope)]


def test_uvloop_asyncio_and_trio_threads_share_one_governor() -> None:
    """uvicorn's loop (uvloop) next to plain asyncio and trio: one bucket, FIFO wake-ups work."""
    pytest.importorskip("uvloop", reason="uvloop is not installed")
    gov = governor(3)
    sends: list[float] = []

    async def calls() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one_call, gov, sends)

    run_in_threads([on("uvloop", calls), on("asyncio", calls), on("trio", calls)])
    assert 12 == len(sends)
    check_spacing(sends, 3, HOLD)


def _timeline_gap() -> tuple[float, float]:
    """Bounds of ``current_time() - time.monotonic()`` as the running loop reads it."""
    before = time.monotonic()
    now = _clock.current_time()
    after = time.monotonic()
    return now - after, now - before


def _gaps_on(runner: str, into: list[tuple[float, float]]) -> Callable[[], None]:
    """A thread target: on a loop of ``runner``, read the timeline's gap 5 times, ms apart."""

    async def read() -> None:
        for _ in range(5):
            into.append(_timeline_gap())
            await anyio.sleep(0.0013)  # lands on varied fractions of uvloop's millisecond

    return on(runner, read)


@pytest.mark.parametrize("anchor", ["asyncio", "trio", "uvloop"])
def test_every_loop_reads_one_timeline_even_when_registered_under_contention(anchor: str) -> None:
    """The loops of several threads agree on "now" to the microsecond.

    Slots written by one loop are read by another, so a loop whose timeline ran
    ahead would grant early by as much. The loop that anchors the timeline is
    seen first; the others register while another thread holds the clock's lock
    (as when many threads start at once, or one loses the GIL mid-registration).
    uvloop's own clock is libuv's, truncated to the millisecond.
    """
    pytest.importorskip("uvloop", reason="uvloop is not installed")
    _clock.reset()
    gaps: list[tuple[float, float]] = []
    _gaps_on(anchor, gaps)()
    others = [runner for runner in ("asyncio", "trio", "uvloop") if runner != anchor]
    found: list[list[tuple[float, float]]] = [[] for _ in others]
    threads = [
        threading.Thread(target=_gaps_on(runner, into), daemon=True)
        for runner, into in zip(others, found, strict=True)
    ]
    with _clock._lock:  # the others see their loops for the first time meanwhile
        for thread in threads:
            thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(10)
    for into in found:
        assert len(into) == 5
        gaps.extend(into)
    lowest_high = min(high for _, high in gaps)
    highest_low = max(low for low, _ in gaps)
    # One true gap lies in every reading's bounds (float rounding aside).
    assert highest_low <= lowest_high + 1e-6, (anchor, gaps)


def test_importing_the_package_settles_trio_support_before_any_thread_starts() -> None:
    """httpcore's choice about trio is made in the importing thread, not by racing threads.

    Left to the first client built, it happened in whichever threads built their
    first clients while a trio thread started: under load about one run in eight
    of six such threads lost trio for the whole process (``KeyError: 'trio'``,
    "Running with trio requires installation of 'httpcore[trio]'").
    """
    pytest.importorskip("trio", reason="trio is not installed")
    probe = (
        "import sys\n"
        "import apientreprise_async\n"
        "sync = sys.modules.get('httpcore._synchronization')\n"
        "print(sync is not None and sync.trio is sys.modules.get('trio') is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_loops_that_ended_are_not_kept_alive_by_the_clock() -> None:
    """A thread pool calling ``asyncio.run`` (or trio) per request leaves no loop behind.

    The clock's registry of loops is weak, but each entry's home used to hold its
    loop: every loop ever run stayed in memory, with all it referenced.
    """
    gov = governor(1000)
    loops: list[weakref.ref[object]] = []

    async def request() -> None:
        await one_call(gov, [])
        try:
            loops.append(weakref.ref(asyncio.get_running_loop()))
        except RuntimeError:  # trio: its token stands for the run
            loops.append(weakref.ref(trio.lowlevel.current_trio_token()))

    def requests(backend: str) -> Callable[[], None]:
        def serve() -> None:
            for _ in range(25):
                anyio.run(request, backend=backend)

        return serve

    run_in_threads([requests(BACKENDS[i % 2]) for i in range(4)])
    gc.collect()
    assert 100 == len(loops)
    # The last loop seen stays cached for the hot path: at most that one is alive.
    assert sum(ref() is not None for ref in loops) <= 1
    assert len(_clock._homes) <= 1
