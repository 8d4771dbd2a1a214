"""The default backend: in memory while alone, the host's store once a sibling appears.

Several processes of one host (``uvicorn --workers 4``, a batch split in
three) share the host's IP and usually one token, and each used to believe it
had the whole quota. The default backend now finds its siblings:

- At its first use it registers the process under ``members/`` of
  :func:`~apientreprise_async.host.runtime_directory` (a lock file it holds
  for life, and a FIFO a daemon thread reads), then looks for other live
  members. Registering before looking means that of two processes starting
  together, at least one sees the other.
- Alone, it is exactly :class:`~apientreprise_async.backends.InMemoryBackend`:
  the uncontended acquire stays as fast as before.
- With siblings, it moves to :class:`~apientreprise_async.host.HostBackend` at
  once and writes a byte into the FIFO of each sibling still alone. That
  sibling's thread then replays into the store what its memory holds (calls
  in flight, occupancy ends of the last period, pauses, caps) and marks
  itself shared; the newcomer grants nothing until every sibling told has
  done so (or died, or let ``_JOIN_WAIT`` pass), so no window overflows
  during the switch. A process never goes back to memory.
- The choice is logged once at INFO. A virtual clock (a test's ``MockClock``
  or fast-forwarding loop) or a runtime directory that cannot be used keeps
  the process in memory.
"""

from __future__ import annotations

import _thread
import asyncio
import atexit
import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import types
import weakref
from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import host as _host
from ._clock import current_time, exact_gap
from .backends import (
    Blocked,
    BucketState,
    Feedback,
    Grant,
    InMemoryBackend,
    Learned,
    SlotRequest,
    _Lane,
)

__all__ = ["DefaultBackend"]

_logger = logging.getLogger("apientreprise_async.governor")

_INF = math.inf
#: Longest wait for a sibling to publish its history before granting anyway.
_JOIN_WAIT = 5.0
#: How often a newcomer looks whether its siblings have published their history.
_JOIN_POLL = 0.01
_MEMBERS = "members"
#: Methods the governor calls on an in-memory backend: alone, the base class's own.
_DIRECT = tuple(
    name
    for name in ("_acquire_lane", "_release_sent", "acquire_now", "release_now", "ready_now")
    if hasattr(InMemoryBackend, name)
)


def _real_clock() -> bool:
    """Whether the running event loop keeps real time (the store's clock is the host's)."""
    try:
        import sniffio

        library = sniffio.current_async_library()
    except Exception:  # no loop (or no sniffio): the process clock is real
        return True
    if library == "trio":
        import trio
        from trio.testing import MockClock

        return not isinstance(trio.lowlevel.current_clock(), MockClock)
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        method = type(loop).time
        return method is asyncio.BaseEventLoop.time or type(loop).__module__.startswith("uvloop")
    return False


class _Membership:
    """This process among the users of the default governor on the host."""

    def __init__(self, directory: Path, on_request: Callable[[], None]) -> None:
        self.directory = _host._private_directory(directory / _MEMBERS)
        self.name = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.closed = False
        fifo = self.directory / f"{self.name}.fifo"
        os.mkfifo(fifo, 0o600)
        # Read and write: opening never blocks and reading never sees an end of file.
        self.fifo_fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        self._on_request = on_request
        # Not threading.Thread: its start() waits for the thread to run, and this runs
        # under the governor's lock, which a finalizer in the new thread may want.
        _thread.start_new_thread(self._listen, ())
        # Last, locked before it is visible (a file seen unlocked is a dead member's):
        # from then on, others may tell us through the FIFO.
        hidden = self.directory / f".{self.name}.lock"
        self.lock_fd = os.open(hidden, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, self.directory / f"{self.name}.lock")
        atexit.register(self.close)

    def _listen(self) -> None:
        try:
            while True:
                data = os.read(self.fifo_fd, 64)
                if self.closed or not data:
                    return
                try:
                    self._on_request()
                except Exception:
                    _logger.exception("could not move the governor to the host-local store")
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fifo_fd)

    def others(self) -> list[str]:
        """Names of the other live members (files of dead ones are removed)."""
        names = []
        for path in self.directory.glob("*.lock"):
            name = path.name[: -len(".lock")]
            if name == self.name or name.startswith("."):  # ".": locked, not yet renamed
                continue
            if _host._owner_alive(self.directory, name):
                names.append(name)
            else:
                for suffix in (".fifo", ".shared"):
                    with contextlib.suppress(OSError):
                        os.unlink(self.directory / f"{name}{suffix}")
        return names

    def alive(self, name: str) -> bool:
        return _host._owner_alive(self.directory, name)

    def is_shared(self, name: str) -> bool:
        return (self.directory / f"{name}.shared").exists()

    def mark_shared(self) -> None:
        _host._private_file(self.directory / f"{self.name}.shared")

    def tell(self, name: str) -> None:
        """Ask ``name`` to move to the store (a byte in its FIFO)."""
        try:
            fd = os.open(self.directory / f"{name}.fifo", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # gone: the wait ends when its lock is seen free
        try:
            os.write(fd, b"s")
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        """Leave: remove our files, stop the thread."""
        if self.closed:
            return
        atexit.unregister(self.close)
        self.closed = True
        with contextlib.suppress(OSError):
            os.write(self.fifo_fd, b"x")
        for suffix in (".lock", ".fifo", ".shared"):
            with contextlib.suppress(OSError):
                os.unlink(self.directory / f"{self.name}{suffix}")
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


class DefaultBackend(InMemoryBackend):
    """The process-wide default: :class:`InMemoryBackend` alone, shared with its siblings."""

    def __init__(self) -> None:
        super().__init__()
        if not hasattr(self, "_lock"):
            self._lock = threading.RLock()
        self._solo = False  # registered and alone: plain memory, nothing else to look at
        self._host: _host.HostBackend | None = None
        self._membership: _Membership | None = None
        self._pending: list[str] = []
        self._pending_until = -_INF
        # Memory grants in flight when the process moved: key -> [(seq, mark, op)] in the store.
        self._replayed: dict[str, list[tuple[int, int, str | None]]] = {}
        self._logged = False
        self._offset = 0.0  # host clock minus the governor's, measured at the join

    def __repr__(self) -> str:
        mode = "host" if self._host is not None else "memory"
        return f"<DefaultBackend {mode} buckets={len(self._buckets)}>"

    @property
    def shared(self) -> bool:
        """Whether the buckets now live in the host's store."""
        return self._host is not None

    # -- joining ------------------------------------------------------------------------

    def _log_once(self, message: str, *args: object) -> None:
        if not self._logged:
            self._logged = True
            _logger.info(message, *args)

    def _join(self) -> None:
        """First use: register, look for siblings, choose."""
        if not _real_clock():
            self._set_solo()
            return
        # Memory times are on this clock; the membership's thread may need to convert them.
        gap = exact_gap()
        self._offset = time.monotonic() - current_time() if gap is None else gap
        directory = _host.runtime_directory()
        try:
            membership = _Membership(directory, self._on_request)
        except OSError as exc:
            self._set_solo()
            _logger.warning(
                "governor: cannot use %s (%s); this process keeps the limits to itself, "
                "so sibling processes of this host could together pass them",
                directory,
                exc,
            )
            return
        self._membership = membership
        others = membership.others()
        if not others:
            self._set_solo()
            self._log_once(
                "governor: no other process of this host uses it; limits kept in memory "
                "(a sibling starting later moves both to %s)",
                directory,
            )
            return
        try:
            self._go_shared()
        except (OSError, sqlite3.Error) as exc:
            # Siblings exist but the store cannot be used (disk full, a foreign file):
            # say so loudly; this process keeps its own limits.
            self._set_solo()
            _logger.error(
                "governor: %d other process(es) of this host use it, but the store in %s "
                "cannot be used (%s): this process keeps the limits to itself, so together "
                "they could pass them",
                len(others),
                directory,
                exc,
            )
            return
        self._pending = [name for name in others if not membership.is_shared(name)]
        self._pending_until = time.monotonic() + _JOIN_WAIT
        for name in self._pending:
            membership.tell(name)
        self._log_once(
            "governor: %d other process(es) of this host use it; limits shared through %s",
            len(others),
            directory,
        )

    def _on_request(self) -> None:
        """A sibling started: move to the store (the membership's thread)."""
        with self._lock:
            if self._host is None:
                self._unset_solo()  # first, so that the hot path comes to the lock
                self._go_shared()
                self._log_once(
                    "governor: a sibling process started; limits shared through %s",
                    _host.runtime_directory(),
                )

    def _joining(self) -> bool:
        """Whether siblings told to publish their history have not done so yet."""
        membership = self._membership
        if not self._pending or membership is None:
            return False
        self._pending = [
            name
            for name in self._pending
            if membership.alive(name) and not membership.is_shared(name)
        ]
        if self._pending and time.monotonic() > self._pending_until:
            _logger.warning(
                "governor: sibling process(es) %s did not publish their calls within %g s; "
                "going on without them",
                ", ".join(name.split("-")[0] for name in self._pending),
                _JOIN_WAIT,
            )
            self._pending = []
        return bool(self._pending)

    def _go_shared(self) -> None:
        """Open the store, replay this process's buckets into it, mark the move (lock held)."""
        host = _host.HostBackend(_host.runtime_directory())
        host._facade = self
        try:
            offset = host._offset()
        except Exception:  # a thread with no event loop: the offset measured at the join
            offset = self._offset
        with host._store.transaction() as db:
            now = host._clock()
            self._replay(host, db, now, offset)
        self._host = host
        self._paused_any = _INF  # pauses now live in the store: look at each send
        if self._membership is not None:
            self._membership.mark_shared()

    def _replay(self, host: _host.HostBackend, db: object, now: float, offset: float) -> None:
        """Write every bucket of memory into the store: its calls count there from now on."""
        assert isinstance(db, sqlite3.Connection)
        if not self._buckets:
            return
        keys = list(self._buckets)
        items = host._load(db, [_host._lookup(key) for key in keys], now)
        marks = ",".join("?" * len(keys))
        existing = {
            row[0] for row in db.execute(f"SELECT key FROM bucket WHERE key IN ({marks})", keys)
        }
        owner = host._store.owner.name
        rows = []
        for key, item in zip(keys, items, strict=True):
            mine = self._buckets[key]
            theirs = item.bucket
            if key not in existing:
                theirs.limit = mine.limit
                theirs.confirmed = mine.confirmed
            elif mine.confirmed and not theirs.confirmed:
                theirs.limit = mine.limit
                theirs.confirmed = True
            theirs.known |= mine.known
            paused = _host._there(mine.paused, offset)
            if paused > theirs.paused:
                theirs.paused = paused
            cap_until = _host._there(mine.cap_until, offset)
            if cap_until > now and theirs.cap_until <= now:
                theirs.cap_until = cap_until
                theirs.cap_left = mine.cap_left
                theirs.cap_at = _host._there(mine.cap_at, offset)
            opened = mine.open  # before the ends: a call answered between the two counts twice
            for end in list(mine.ends):
                stored = end + offset
                if stored > now:
                    insort(theirs.ends, stored)
            probes = list(mine.probing)
            replayed = self._replayed.setdefault(key, [])
            for index in range(opened):
                op = probes[index] if index < len(probes) else None
                seq = theirs.granted
                mark = theirs.granted - theirs.open  # every call open now may land after it
                theirs.granted += 1
                theirs.open += 1
                if op is not None:
                    theirs.probing.add(op)
                rows.append((key, seq, owner, now + host.lease, op))
                item.expiry = min(item.expiry, now + host.lease)
                replayed.append((seq, mark, op))
        db.executemany("INSERT INTO slot VALUES (?, ?, ?, ?, ?)", rows)
        host._save(db, items, now, offset)

    # -- routing ------------------------------------------------------------------------

    def _route(self) -> _host.HostBackend | None:
        """The store once shared, ``None`` while alone (joining at first use)."""
        if self._solo:
            return None
        if self._host is None and self._membership is None:
            with self._lock:
                if not self._solo and self._host is None and self._membership is None:
                    self._join()
        return self._host

    def _waiting(self, requests: Sequence[SlotRequest]) -> Blocked:
        now = current_time()
        return Blocked((now + _JOIN_POLL,) * len(requests))

    def _set_solo(self) -> None:
        """Alone: the governor's hot path reaches the in-memory methods with no detour."""
        self._solo = True
        # Instance attributes win over the class's: not even a check per call.
        for name in _DIRECT:
            setattr(self, name, types.MethodType(getattr(InMemoryBackend, name), self))

    def _unset_solo(self) -> None:
        self._solo = False
        for name in _DIRECT:
            self.__dict__.pop(name, None)

    def _acquire_lane(self, lane: _Lane) -> Grant | Blocked:
        if self._solo:
            return InMemoryBackend._acquire_lane(self, lane)
        return self.acquire_now(lane.requests)

    def acquire_now(self, requests: Sequence[SlotRequest]) -> Grant | Blocked:
        """Take slots: in memory while alone, else in the store (after the siblings' replay)."""
        if self._solo:
            return InMemoryBackend.acquire_now(self, requests)
        # The lock orders this against a move under way in the membership's thread.
        with self._lock:
            host = self._route()
            if host is None:
                return InMemoryBackend.acquire_now(self, requests)
            if self._joining():
                return self._waiting(requests)
            return host.acquire_now(requests)

    def _release_sent(self, grant: Grant, end: float, lane: _Lane | None = None) -> None:
        with self._lock:
            if self._host is None:
                InMemoryBackend._release_sent(self, grant, end, lane)
                return
        self.release_now(grant, end=end)

    def release_now(
        self, grant: Grant, *, end: float | None, feedback: Feedback | None = None
    ) -> Learned | None:
        """Give slots back where they were taken (a memory grant after the move: the store)."""
        with self._lock:
            host = self._host
            if host is None:
                return InMemoryBackend.release_now(self, grant, end=end, feedback=feedback)
            if id(grant) not in host._seqs:
                grant = self._adopt(host, grant)
            return host.release_now(grant, end=end, feedback=feedback)

    def _adopt(self, host: _host.HostBackend, grant: Grant) -> Grant:
        """A grant taken in memory before the move: release the store slot replayed for it."""
        seqs, marks = [], []
        for request, probing in zip(grant.requests, grant.probing, strict=True):
            replayed = self._replayed.get(request.key, [])
            wanted = request.op if probing else None
            pick = next((i for i, r in enumerate(replayed) if r[2] == wanted), None)
            if pick is None and replayed:
                pick = 0
            if pick is None:
                seqs.append(-1)  # taken in memory after the replay: nothing to free there
                marks.append(0)
                continue
            seq, mark, _ = replayed.pop(pick)
            seqs.append(seq)
            marks.append(mark)
        adopted = Grant(grant.requests, grant.probing, tuple(marks))
        host._seqs[id(adopted)] = (adopted, tuple(seqs))
        return adopted

    async def ready(self, requests: Sequence[SlotRequest]) -> tuple[float | None, ...]:
        """Earliest grant time per request."""
        return self.ready_now(requests)

    def ready_now(self, requests: Sequence[SlotRequest]) -> tuple[float | None, ...]:
        """:meth:`ready`, synchronously."""
        with self._lock:
            host = self._route()
            if host is None:
                now = self._now()
                return tuple(self._bucket(r).ready(now, r) for r in requests)
            if self._joining():
                return self._waiting(requests).ready
            return host.ready_now(requests)

    async def seed(self, request: SlotRequest, feedback: Feedback) -> None:
        """Create (or correct) a bucket whose real limit is already known."""
        with self._lock:
            host = self._route()
            if host is not None:
                host.seed_now(request, feedback)
                return
        await InMemoryBackend.seed(self, request, feedback)

    # Below, the lock comes before the store's own (always in that order: see _on_request).

    def pause(self, key: str, until: float) -> None:
        """Grant nothing in ``key`` before ``until`` (in every process once shared)."""
        with self._lock:
            host = self._host
            if host is None:
                InMemoryBackend.pause(self, key, until)
            else:
                host.pause(key, until)

    def paused_until(self, key: str) -> float:
        """End of ``key``'s pause (``-inf`` when none)."""
        host = self._host
        if host is None:
            return InMemoryBackend.paused_until(self, key)
        return host.paused_until(key)

    async def estimate(self, request: SlotRequest, position: int, hold: float) -> float:
        """When a call with ``position`` calls ahead would get a slot (a lower bound)."""
        with self._lock:
            host = self._route()
            if host is not None:
                return await host.estimate(request, position, hold)  # never suspends
        return await InMemoryBackend.estimate(self, request, position, hold)

    def snapshot(self) -> Mapping[str, BucketState]:
        """Every bucket, from memory or from the store."""
        with self._lock:
            host = self._host
            if host is not None:
                return host.snapshot()
        return InMemoryBackend.snapshot(self)

    def clear(self) -> None:
        """Forget every bucket and leave the host's siblings (between tests)."""
        with self._lock:
            InMemoryBackend.clear(self)
            self._leave()

    def _leave(self) -> None:
        if self._membership is not None:
            self._membership.close()
        self._membership = None
        self._host = None
        self._unset_solo()
        self._pending = []
        self._replayed.clear()
        self._logged = False

    def _after_fork(self) -> None:
        # The child is a new process: the parent's calls are the parent's to publish,
        # and its copies of the parent's locks must not keep the parent "alive".
        if self._membership is not None:
            for fd in (self._membership.lock_fd, self._membership.fifo_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._membership = None  # not close(): it would remove the parent's files
        InMemoryBackend.clear(self)
        self._leave()


_instances: weakref.WeakSet[DefaultBackend] = weakref.WeakSet()


def new_default_backend() -> DefaultBackend:
    """The process's default backend (tracked so that a forked child re-registers)."""
    backend = DefaultBackend()
    _instances.add(backend)
    return backend


def _after_fork_in_child() -> None:
    for backend in list(_instances):
        backend._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
if sys.platform == "win32":  # pragma: no cover - fcntl and FIFOs are POSIX
    raise ImportError("apientreprise_async._sharing needs a POSIX system")
