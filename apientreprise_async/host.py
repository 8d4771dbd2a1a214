"""One quota for every process of a host, with no server: the governor's buckets in SQLite.

::

    from apientreprise_async import AsyncClient, Governor
    from apientreprise_async.host import HostBackend

    async with AsyncClient(token, governor=Governor(backend=HostBackend())) as client:
        ...

Every process of the host that builds a :class:`HostBackend` on the same
directory shares each token's buckets and the IP bucket, as one process would.
The default governor does this on its own once it sees a sibling process (see
the README's deployment section); this class is for choosing it explicitly.

- The buckets live in a SQLite database in WAL mode, changed by short
  ``BEGIN IMMEDIATE`` transactions (a few tens of microseconds, run on the
  event loop: cheaper than a thread hop) under an ``flock`` that queues the
  processes in the kernel instead of SQLite's sleeping busy handler.
- The rules are :class:`~apientreprise_async.backends.InMemoryBackend`'s own
  bucket code, applied to the rows a call needs, so both backends agree.
- Times are stored on ``CLOCK_MONOTONIC`` (``time.monotonic``), which every
  process of a Linux host shares, and converted to the caller's anyio clock
  at the edge. The database remembers the boot it belongs to and starts
  afresh after a reboot.
- A waiter whose bucket is blocked by a call in flight *in another process*
  looks again every ``poll`` seconds (a bounded poll); every other wait has an
  exact wake-up time, and a release in this process wakes its waiters at once.
- An open slot carries its owner, a process that holds an ``flock`` on its own
  file for as long as it lives. A waiter that finds slots of a dead owner (a
  worker killed mid-call) turns them into ordinary occupancy ending one period
  from then; a ``lease`` bounds every open slot in any case.
- Files live in :func:`runtime_directory`, created ``0700``; files ``0600``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import marshal
import math
import os
import sqlite3
import sys
import tempfile
import threading
import time
import weakref
from array import array
from bisect import insort
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

# Modules, not names: this module's public names are exactly its ``__all__``.
from . import _governor
from ._clock import current_time as _current_time
from ._clock import exact_gap as _exact_gap
from .backends import Blocked as _Blocked
from .backends import BucketState as _BucketState
from .backends import Feedback as _Feedback
from .backends import Grant as _Grant
from .backends import Learned as _Learned
from .backends import SlotRequest as _SlotRequest
from .backends import _Bucket

__all__ = ["HostBackend", "runtime_directory"]

_logger = logging.getLogger("apientreprise_async.host")

#: Overrides the directory of the host's shared files (tests give each run its own).
_ENV_DIRECTORY = "APIENTREPRISE_ASYNC_RUNTIME_DIR"
_DB_NAME = "governor.sqlite3"
_LOCK_NAME = "governor.lock"
_OWNERS = "owners"
_SCHEMA = 1
_INF = math.inf
#: How long a dead owner's open slot stays occupied when its bucket never saw a
#: release that told the hold: the default period (60 s) plus its margin.
_DEFAULT_HOLD = 60.3
#: Per-bucket state kept in the blob: every ``_Bucket`` slot but those rebuilt from rows.
_DERIVED = frozenset({"open", "probing", "ends"})
_FIELDS = tuple(name for name in _Bucket.__slots__ if name not in _DERIVED)
#: Buckets untouched this long, with nothing open, are dropped when a process opens the store.
_IDLE = 3600.0


def runtime_directory() -> Path:
    """Where the host's shared governor files live (not created here).

    ``$APIENTREPRISE_ASYNC_RUNTIME_DIR`` if set; else
    ``$XDG_RUNTIME_DIR/apientreprise_async`` when that runtime directory exists
    (per user, in memory, cleared at logout); else
    ``<temp dir>/apientreprise_async-<uid>``.

    .. versionadded:: 0.1.0
    """
    explicit = os.environ.get(_ENV_DIRECTORY)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "apientreprise_async"
    return Path(tempfile.gettempdir()) / f"apientreprise_async-{os.getuid()}"


def _private_directory(path: Path) -> Path:
    """Create ``path`` (``0700``) or check that only this user can use it."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not os.path.isdir(path) or os.path.islink(path):
        raise PermissionError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _private_file(path: Path) -> None:
    """Create ``path`` readable and writable by this user only, if absent."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _boot_id() -> str:
    """An identifier of this boot: ``CLOCK_MONOTONIC`` values mean nothing across two."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return f"~{time.time() - time.monotonic():.0f}"


class _Owner:
    """This process, as the owner of open slots: alive while it holds an ``flock``."""

    def __init__(self, directory: Path) -> None:
        self.name = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.pid = os.getpid()
        self.path = directory / f"{self.name}.lock"
        hidden = directory / f".{self.name}.lock"
        fd = os.open(hidden, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, self.path)  # visible only once locked: unlocked means dead
        self.fd = fd  # kept open for the process's life: the kernel drops the lock at exit

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _owner_alive(directory: Path, name: str) -> bool:
    """Whether the process named ``name`` still holds its lock (removing its file if not)."""
    path = directory / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: keep its slots (the lease still bounds them)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True
    except OSError:
        os.close(fd)
        return True
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)
    return False


class _Loaded:
    """One bucket as read for one transaction, with a count of its open slots."""

    __slots__ = ("bucket", "expiry", "foreign", "hold", "key")

    def __init__(self, key: str, bucket: _Bucket, hold: float) -> None:
        self.key = key
        self.bucket = bucket
        self.hold = hold  # how long a sent call occupies its slot after its answer
        self.foreign = 0  # open slots of other processes
        self.expiry = _INF  # the earliest lease end of its open slots


class _Store:
    """The database of one directory, shared by every :class:`HostBackend` of this process."""

    def __init__(self, directory: Path) -> None:
        self.directory = _private_directory(directory)
        self.owners = _private_directory(directory / _OWNERS)
        for name in (_DB_NAME, f"{_DB_NAME}-wal", f"{_DB_NAME}-shm", _LOCK_NAME):
            _private_file(directory / name)
        self.lock_fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        self.mutex = threading.Lock()
        self.owner = _Owner(self.owners)
        self.alive: dict[str, float] = {}  # owner -> until when it is taken as alive
        # Buckets as of our last transaction, valid while no other connection wrote.
        self.cache: dict[str, _Loaded] = {}
        self.version: int | None = None
        self.views: weakref.WeakSet[HostBackend] = weakref.WeakSet()
        self._sweep()
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as exc:
            # Not a database (a crash mid-write of another layout, a stray file): the
            # store holds only minutes of history, so start a new one.
            _logger.warning("governor store %s unusable (%s); starting a new one", directory, exc)
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                for name in (_DB_NAME, f"{_DB_NAME}-wal", f"{_DB_NAME}-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(directory / name)
                    _private_file(directory / name)
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            self.db = self._open()
        atexit.register(self.owner.close)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.directory / _DB_NAME, isolation_level=None, check_same_thread=False
        )
        self.db = db
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                # WAL and no fsync: the file only needs to outlive a process, not the host.
                db.execute("PRAGMA busy_timeout=10000")  # only if a foreign writer skips the lock
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            with self.transaction():
                self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _sweep(self) -> None:
        """Remove the lock files of owners long dead (their slots are long reclaimed)."""
        for path in self.owners.glob("*.lock"):
            name = path.name[: -len(".lock")]
            if name != self.owner.name and not name.startswith("."):  # "." : being created
                _owner_alive(self.owners, name)

    @staticmethod
    def _prepare(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        boot = _boot_id()
        found = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if found.get("boot") != boot or found.get("schema") != str(_SCHEMA):
            # Another boot's monotonic times, or another layout: start afresh.
            db.execute("DROP TABLE IF EXISTS bucket")
            db.execute("DROP TABLE IF EXISTS slot")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (boot,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(_SCHEMA),))
        db.execute(
            "CREATE TABLE IF NOT EXISTS bucket (key TEXT PRIMARY KEY, state BLOB NOT NULL, "
            "ends BLOB NOT NULL, hold REAL NOT NULL, touched REAL NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS slot (key TEXT NOT NULL, seq INTEGER NOT NULL, "
            "owner TEXT NOT NULL, lease REAL NOT NULL, op TEXT, PRIMARY KEY (key, seq)) "
            "WITHOUT ROWID"
        )
        db.execute(
            "DELETE FROM bucket WHERE touched < ? AND key NOT IN (SELECT key FROM slot)",
            (time.monotonic() - _IDLE,),
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, alone on the host (threads, then processes, queue)."""
        with self.mutex:
            # The kernel queues the processes and wakes the next at once; SQLite's busy
            # handler would sleep whole milliseconds on the event loop instead.
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            try:
                db = self.db
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    self.cache.clear()  # it may hold changes rolled back
                    self.version = None
                    raise
                db.execute("COMMIT")
            finally:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def is_alive(self, owner: str) -> bool:
        """Whether ``owner`` lives; a live answer is trusted for a tenth of a second."""
        if owner == self.owner.name:
            return True
        now = time.monotonic()
        if self.alive.get(owner, -_INF) > now:
            return True
        if _owner_alive(self.owners, owner):
            self.alive[owner] = now + 0.1
            return True
        self.alive.pop(owner, None)
        return False


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def _store(directory: Path) -> _Store:
    key = os.path.realpath(directory)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = _Store(directory)
        return store


def _forget_stores_after_fork() -> None:
    # A child shares neither the parent's SQLite connection nor its identity; its copy
    # of the parent's owner lock would keep the parent's slots held after its death.
    global _STORES_LOCK  # a lock held by another thread at the fork stays held
    for store in _STORES.values():
        for fd in (store.owner.fd, store.lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
    _STORES.clear()
    _STORES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_stores_after_fork)


def _dump(bucket: _Bucket) -> bytes:
    return marshal.dumps(tuple(getattr(bucket, name) for name in _FIELDS))


def _new_bucket(request: _SlotRequest) -> _Bucket:
    """A bucket first seen, as ``InMemoryBackend`` creates it."""
    bucket = _Bucket(request.limit, confirmed=request.op is None or not request.probe)
    bucket.ends = array("d")  # type: ignore[assignment]  # a sorted sequence of floats
    return bucket


def _restore(state: bytes, ends: bytes) -> _Bucket:
    bucket = _Bucket(0, confirmed=True)
    for name, value in zip(_FIELDS, marshal.loads(state), strict=True):
        setattr(bucket, name, value)
    bucket.ends = array("d", ends)  # type: ignore[assignment]
    return bucket


def _lookup(key: str) -> _SlotRequest:
    """A request that reads ``key`` as it is (its limit lowers no guess)."""
    return _SlotRequest(key, sys.maxsize)


def _ends_bytes(ends: Sequence[float]) -> bytes:
    return ends.tobytes() if isinstance(ends, array) else array("d", ends).tobytes()


#: The last offset read per store clock, shared by every view in the process: two views
#: converting one stored time must agree to the bit (a pause must never read early).
_LAST_OFFSET: dict[Callable[[], float], float] = {}


def _back(value: float, offset: float) -> float:
    """A store time as an anyio time (infinities kept)."""
    return value if value in (_INF, -_INF) else value - offset


def _there(value: float, offset: float) -> float:
    """An anyio time as a store time (infinities kept)."""
    return value if value in (_INF, -_INF) else value + offset


class HostBackend:
    """A :class:`~apientreprise_async.backends.GovernorBackend` shared by the processes of a host.

    Args:
        directory: where the database and the owners' lock files live;
            :func:`runtime_directory` by default. Created ``0700`` if absent;
            refused if it belongs to another user.
        poll: how often a waiter blocked by another process's call in flight
            looks again, in seconds (a release in this process wakes it at once).
        lease: longest time a granted call may stay unanswered; past it, its
            slot frees itself even though its process still lives.
        clock: the clock the store keeps its times on: ``time.monotonic``, one
            for the whole host, unless every user of the directory shares
            another (a test's virtual clock, ``anyio.current_time``).

    Raises:
        PermissionError: the directory belongs to another user.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        poll: float = 0.02,
        lease: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not poll > 0 or not lease > 0:
            raise ValueError("poll and lease must be positive")
        self.directory = Path(directory) if directory is not None else runtime_directory()
        self.poll = poll
        self.lease = lease
        self._clock = clock
        self._store = _store(self.directory)
        self._store.views.add(self)
        self._seqs: dict[int, tuple[_Grant, tuple[int, ...]]] = {}
        self._paused: dict[str, tuple[float, float, float]] = {}
        # Whose governors' waiters a release here concerns (the default backend wraps one).
        self._facade: object = self

    def __repr__(self) -> str:
        return f"<HostBackend {str(self.directory)!r} owner={self._store.owner.name}>"

    # -- rows ---------------------------------------------------------------------------

    def _offset(self) -> float:
        """The store's time minus the caller's anyio time.

        On ``time.monotonic`` from a loop whose clock is it under another name,
        the governor's clock knows the offset exactly. Otherwise it is measured:
        real clocks keep a constant offset, so a value within a millisecond of
        the last one is taken as the same (conversions then round-trip
        exactly); a read preempted between the two clocks is read again.
        """
        clock = self._clock
        if clock is time.monotonic:
            gap = _exact_gap()
            if gap is not None:
                return gap
        for _ in range(3):
            before = clock()
            now = _current_time()
            after = clock()
            if after - before < 1e-4:
                break
        offset = (before + after) / 2 - now
        last = _LAST_OFFSET.get(clock, _INF)
        if abs(offset - last) < 1e-3:
            return last
        _LAST_OFFSET[clock] = offset
        return offset

    def _load(
        self, db: sqlite3.Connection, requests: Sequence[_SlotRequest], now: float
    ) -> list[_Loaded]:
        store = self._store
        cache = store.cache
        # Unchanged by any other connection since our last transaction: what we hold is
        # the store's state, no need to read it again (one process alone reads nothing).
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != store.version:
            cache.clear()
            store.version = version
        keys = [
            key
            for key in dict.fromkeys(r.key for r in requests)
            if key not in cache or cache[key].expiry <= now
        ]
        if keys:
            self._read(db, keys, requests, now)
        loaded = [cache[r.key] for r in requests]
        for item, request in zip(loaded, requests, strict=True):
            bucket = item.bucket
            if not bucket.confirmed and request.limit < bucket.limit:
                # Two configurations share the key: the stricter guess wins.
                bucket.limit = request.limit
        return loaded

    def _read(
        self,
        db: sqlite3.Connection,
        keys: list[str],
        requests: Sequence[_SlotRequest],
        now: float,
    ) -> None:
        """Read ``keys`` from the store into the cache, dropping open slots past their lease."""
        marks = ",".join("?" * len(keys))
        rows = {
            row[0]: row[1:]
            for row in db.execute(
                f"SELECT key, state, ends, hold FROM bucket WHERE key IN ({marks})", keys
            )
        }
        db.execute(f"DELETE FROM slot WHERE key IN ({marks}) AND lease <= ?", (*keys, now))
        # Open slots, counted by SQLite: a bucket may have many calls in flight.
        counts = {
            row[0]: row[1:]
            for row in db.execute(
                f"SELECT key, count(*), sum(owner != ?), group_concat(op, char(31)), min(lease) "
                f"FROM slot WHERE key IN ({marks}) GROUP BY key",
                (self._store.owner.name, *keys),
            )
        }
        first: dict[str, _SlotRequest] = {}
        for request in requests:
            first.setdefault(request.key, request)
        for key in keys:
            row = rows.get(key)
            if row is None:
                item = _Loaded(key, _new_bucket(first[key]), _DEFAULT_HOLD)
            else:
                item = _Loaded(key, _restore(row[0], row[1]), row[2])
            count = counts.get(key)
            if count is not None:
                item.bucket.open = count[0]
                item.foreign = count[1]
                if count[2]:
                    item.bucket.probing = set(count[2].split("\x1f"))
                item.expiry = count[3]
            self._store.cache[key] = item

    def _save(
        self, db: sqlite3.Connection, items: Sequence[_Loaded], now: float, offset: float
    ) -> None:
        rows = {}
        for item in items:
            bucket = item.bucket
            rows[item.key] = (item.key, _dump(bucket), _ends_bytes(bucket.ends), item.hold, now)
            self._mirror(item.key, bucket.paused, offset)
        db.executemany("INSERT OR REPLACE INTO bucket VALUES (?, ?, ?, ?, ?)", rows.values())

    def _mirror(self, key: str, paused: float, offset: float) -> None:
        """Keep ``key``'s pause for :meth:`paused_until`: store time, offset, anyio time."""
        if paused != -_INF:
            self._paused[key] = (paused, offset, paused - offset)
        else:
            self._paused.pop(key, None)

    def _reclaim(self, db: sqlite3.Connection, item: _Loaded, now: float) -> bool:
        """Turn the open slots of dead owners into occupancy ending one hold from now."""
        store = self._store
        slots = db.execute(
            "SELECT seq, owner, op FROM slot WHERE key=? AND owner != ?",
            (item.key, store.owner.name),
        ).fetchall()
        dead = {owner for _, owner, _ in slots if not store.is_alive(owner)}
        if not dead:
            return False
        gone = [slot for slot in slots if slot[1] in dead]
        db.executemany("DELETE FROM slot WHERE key=? AND seq=?", [(item.key, s[0]) for s in gone])
        bucket = item.bucket
        bucket.open -= len(gone)
        item.foreign -= len(gone)
        for _, _, op in gone:
            if op is not None:
                bucket.probing.discard(op)
        end = now + item.hold
        for _ in gone:
            # Such a call may have reached the server just before its worker died.
            insort(bucket.ends, end)
        _logger.warning(
            "bucket %s: %d slot(s) of dead process(es) %s freed once a period has passed",
            item.key,
            len(gone),
            ", ".join(sorted(name.split("-")[0] for name in dead)),
        )
        return True

    def _ready(
        self,
        db: sqlite3.Connection,
        items: Sequence[_Loaded],
        requests: Sequence[_SlotRequest],
        now: float,
    ) -> list[float | None]:
        """Per request, when it could be granted (store clock); ``None``: after a local release."""
        ready = [item.bucket.ready(now, r) for item, r in zip(items, requests, strict=True)]
        for index, (item, request) in enumerate(zip(items, requests, strict=True)):
            when = ready[index]
            if (when is None or when > now) and item.foreign:
                if self._reclaim(db, item, now):
                    when = ready[index] = item.bucket.ready(now, request)
                if when is None and item.foreign:
                    # Another process's call in flight: its release cannot wake us.
                    ready[index] = now + self.poll
        return ready

    # -- the protocol, synchronously --------------------------------------------------------

    def acquire_now(self, requests: Sequence[_SlotRequest]) -> _Grant | _Blocked:
        """:meth:`acquire`, synchronously (a transaction of a few tens of microseconds)."""
        offset = self._offset()
        with self._store.transaction() as db:
            now = self._clock()
            items = self._load(db, requests, now)
            ready = self._ready(db, items, requests, now)
            if any(when is None or when > now for when in ready):
                self._save(db, items, now, offset)
                return _Blocked(tuple(None if w is None else _back(w, offset) for w in ready))
            probing, marks, seqs, rows = [], [], [], []
            owner = self._store.owner.name
            for item, request in zip(items, requests, strict=True):
                seq = item.bucket.granted
                probe, mark = item.bucket.take(request, now)
                probing.append(probe)
                marks.append(mark)
                seqs.append(seq)
                lease = now + self.lease
                item.expiry = min(item.expiry, lease)
                rows.append((item.key, seq, owner, lease, request.op if probe else None))
            db.executemany("INSERT INTO slot VALUES (?, ?, ?, ?, ?)", rows)
            self._save(db, items, now, offset)
        grant = _Grant(tuple(requests), tuple(probing), tuple(marks))
        self._seqs[id(grant)] = (grant, tuple(seqs))
        return grant

    def ready_now(self, requests: Sequence[_SlotRequest]) -> tuple[float | None, ...]:
        """:meth:`ready`, synchronously."""
        offset = self._offset()
        with self._store.transaction() as db:
            now = self._clock()
            items = self._load(db, requests, now)
            ready = self._ready(db, items, requests, now)
            self._save(db, items, now, offset)
        return tuple(None if w is None else _back(w, offset) for w in ready)

    def release_now(
        self, grant: _Grant, *, end: float | None, feedback: _Feedback | None = None
    ) -> _Learned | None:
        """:meth:`release`, synchronously."""
        _, seqs = self._seqs.pop(id(grant))
        offset = self._offset()
        learned: _Learned | None = None
        with self._store.transaction() as db:
            now = self._clock()
            requests = grant.requests
            items = self._load(db, requests, now)
            stored_end = None if end is None else _there(end, offset)
            for index, (item, request) in enumerate(zip(items, requests, strict=True)):
                bucket = item.bucket
                seq = seqs[index]
                occupied = stored_end
                if index == 0 and feedback is not None:
                    stored = feedback._replace(
                        reset_at=_there(feedback.reset_at, offset),
                        opened_at=_there(feedback.opened_at, offset),
                        counted_from=_there(feedback.counted_from, offset),
                    )
                    learned = bucket.learn(request, stored, now, grant.marks[0])
                    if occupied is not None and stored.reset_at < occupied:
                        # The window that counted the call ends then: so does its occupancy.
                        occupied = stored.reset_at
                deleted = db.execute("DELETE FROM slot WHERE key=? AND seq=?", (item.key, seq))
                if deleted.rowcount:
                    bucket.open -= 1
                    if grant.probing[index] and request.op is not None:
                        bucket.probing.discard(request.op)
                elif occupied is None:
                    continue  # its lease had ended: nothing was counted, nothing to give back
                if occupied is None:
                    if bucket.cap_until > now:
                        bucket.cap_left += 1  # never reached the server: refund the cap
                else:
                    insort(bucket.ends, occupied)
                    if stored_end is not None:
                        item.hold = max(stored_end - now, 0.0)
            self._save(db, items, now, offset)
        self._wake_views(grant.requests)
        return learned

    def _wake_views(self, requests: Sequence[_SlotRequest]) -> None:
        """Wake the waiters of this process's other views: they share these buckets."""
        for view in list(self._store.views):
            if view is not self:
                for request in requests:
                    _governor.wake_waiters(view._facade, request.key)  # type: ignore[arg-type]

    def seed_now(self, request: _SlotRequest, feedback: _Feedback) -> None:
        """:meth:`seed`, synchronously."""
        offset = self._offset()
        with self._store.transaction() as db:
            now = self._clock()
            (item,) = self._load(db, [request], now)
            bucket = item.bucket
            bucket.limit = feedback.limit
            bucket.confirmed = True
            if request.op is not None:
                bucket.known.add(request.op)
            bucket.cap(
                feedback._replace(reset_at=_there(feedback.reset_at, offset)),
                now,
                others=bucket.open,
            )
            self._save(db, [item], now, offset)

    # -- the protocol -----------------------------------------------------------------------

    async def acquire(self, requests: Sequence[_SlotRequest]) -> _Grant | _Blocked:
        """Take one slot in every bucket of ``requests`` if all are free now, else none."""
        return self.acquire_now(requests)

    async def ready(self, requests: Sequence[_SlotRequest]) -> tuple[float | None, ...]:
        """Earliest grant time per request, without taking anything."""
        return self.ready_now(requests)

    async def release(
        self, grant: _Grant, *, end: float | None, feedback: _Feedback | None = None
    ) -> _Learned | None:
        """Give the slots of ``grant`` back (see the protocol)."""
        return self.release_now(grant, end=end, feedback=feedback)

    async def seed(self, request: _SlotRequest, feedback: _Feedback) -> None:
        """Create (or correct) a bucket whose real limit is already known."""
        self.seed_now(request, feedback)

    def pause(self, key: str, until: float) -> None:
        """Grant nothing in ``key`` before ``until``, in every process of the host."""
        offset = self._offset()
        with self._store.transaction() as db:
            now = self._clock()
            row = (
                key in self._store.cache
                or db.execute("SELECT 1 FROM bucket WHERE key=?", (key,)).fetchone()
            )
            if not row:
                return  # as in memory: a bucket never used has nothing to pause
            (item,) = self._load(db, [_lookup(key)], now)
            stored = _there(until, offset)
            if stored > item.bucket.paused:
                item.bucket.paused = stored
                self._save(db, [item], now, offset)
                self._paused[key] = (stored, offset, until)

    def paused_until(self, key: str) -> float:
        """End of ``key``'s pause as this process last read it (``-inf`` when none)."""
        mirrored = self._paused.get(key)
        if mirrored is None:
            return -_INF
        paused, then, converted = mirrored
        offset = self._offset()
        # The offset drifts by the clocks' jitter: the time as first converted stays exact.
        return converted if abs(offset - then) < 1e-3 else paused - offset

    async def estimate(self, request: _SlotRequest, position: int, hold: float) -> float:
        """When a call with ``position`` calls ahead would get a slot (a lower bound)."""
        offset = self._offset()
        with self._store.transaction() as db:
            now = self._clock()
            (item,) = self._load(db, [request], now)
        return _back(item.bucket.estimate(now, position, hold), offset)

    def snapshot(self) -> Mapping[str, _BucketState]:
        """Every bucket of the store, as it stands now."""
        offset = self._offset()
        with self._store.transaction() as db:
            now = self._clock()
            keys = [row[0] for row in db.execute("SELECT key FROM bucket")]
            items = self._load(db, [_lookup(key) for key in keys], now) if keys else []
        states = {}
        for item in items:
            state = item.bucket.view(item.key, now)
            states[item.key] = _BucketState(
                key=state.key,
                limit=state.limit,
                confirmed=state.confirmed,
                open=state.open,
                occupied=state.occupied,
                next_free=None if state.next_free is None else _back(state.next_free, offset),
                paused_until=_back(state.paused_until, offset),
                cap_remaining=state.cap_remaining,
                cap_until=_back(state.cap_until, offset),
                outside_rate=state.outside_rate,
            )
        return states
