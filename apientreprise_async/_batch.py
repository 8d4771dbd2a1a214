"""The batch runner: many inputs through one client, lazily, at the governor's pace.

::

    async with client.batch("api_entreprise_v3_insee_unites_legales", sirens,
                            output="out.jsonl", off_peak="22:00-06:00") as outcomes:
        async for outcome in outcomes:
            ...

Shape: one feeder task reads the inputs and pushes jobs into a bounded
memory stream; a fixed pool of workers takes jobs, calls the API and pushes
outcomes into a second bounded stream; the caller reads that one. Both
streams are small, so memory does not grow with the number of inputs, and a
slow reader stops the feeder (backpressure) instead of piling up results.

Why a context manager and not a bare async generator: the workers live in a
task group, which must be left by the task that opened it. An async
generator abandoned by ``break`` is finalised later, possibly from another
task, and cannot guarantee that; ``async with`` can.

Checkpoints: each outcome is written to the output file (one JSON line,
flushed) before the caller sees it. Inputs already present in the file are
skipped on the next run, found through a sorted array of 64-bit digests
(8 bytes per distinct done input, plus a 4-byte count; not a set of
strings). A line cut short by ``kill -9`` is dropped and its input done again.

Duplicates: every occurrence of an input is its own job, in a fresh run as
in a resumed one, so each line of the input is accounted for by one line of
the output. On resume, the checkpoint counts the lines of each (input,
operation): the *n*-th occurrence (from 0) of an input is skipped when the
output already holds more than *n* lines for it, and done otherwise. That is
keying the checkpoint by (occurrence number, input, operation), with the
occurrence numbers counted from the output file rather than from the inputs,
so a fresh run still keeps no per-input state at all.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import json
import logging
import os
import pathlib
from array import array
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Self, TypedDict

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._catalogue import Endpoint, IdKind, Maintenance, get_endpoint
from ._config import USE_DEFAULT, UseDefault
from ._errors import (
    ApiEntrepriseError,
    ApiError,
    AuthenticationError,
    AuthorizationError,
    InvalidParameterError,
    NotFoundError,
    RateLimitError,
    ServiceUnreachable,
    TokenExpiredError,
    TransportError,
)
from ._governor import Counters
from ._maintenance import maintenance_remaining, paris_time
from ._response import Response
from ._retry import RetryPolicy
from .audit import _field

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = [
    "BATCH_RETRY",
    "Batch",
    "BatchOptions",
    "BatchStats",
    "Input",
    "Inputs",
    "Operations",
    "Outcome",
    "OutcomeStatus",
    "parse_window",
]

#: What one input may be: an identifier, or the parameters of the call.
Input = str | Mapping[str, Any]
#: Inputs of a batch: any iterable, sync (a list, a file reader) or async.
Inputs = Iterable[Input] | AsyncIterable[Input]
#: One operation id, or several to call for each input.
Operations = str | Sequence[str]
OutcomeStatus = Literal["ok", "not_found", "invalid", "error"]

#: Retries a batch uses unless told otherwise: 429s after the governor's pause,
#: transient 502/504, 409s and timeouts; no total deadline, since a call of a
#: batch may legitimately queue in the governor for a whole period.
BATCH_RETRY = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=60.0, deadline=None)

# Errors that say nothing about one input but about the whole run (token,
# privileges, a silent server): going on would only burn quota or write a
# million identical error lines. The batch stops and raises them, and writes no
# line for the input, so that a rerun once the cause is fixed does it.
_FATAL = (AuthenticationError, AuthorizationError, TokenExpiredError, ServiceUnreachable)
_logger = logging.getLogger("apientreprise_async.batch")
# Traceability refused locally is configuration, not a bad input.
_TRACEABILITY = frozenset({"recipient", "context", "object"})
# A local 429 (the bucket was paused between grant and send) is requeued, not
# an outcome; this bounds how often one job may be requeued that way.
_LOCAL_REQUEUES = 50
# Longest single nap while a window is closed: the wall clock is read again
# after it, so a suspended laptop or a clock change cannot make us oversleep.
_MAX_NAP = 300.0
# Default ceiling of workers: more than enough to keep a 250-per-period bucket
# full at real latencies, and under the client's 200 pooled connections.
_MAX_DEFAULT_WORKERS = 100


class BatchOptions(TypedDict, total=False):
    """Keyword options of :meth:`AsyncClient.batch` (see :class:`Batch`)."""

    concurrency: int | None
    retry: RetryPolicy | UseDefault | None
    off_peak: str | tuple[dt.time, dt.time] | None
    wait_maintenance: bool
    output: str | os.PathLike[str] | None
    fsync: bool
    now: Callable[[], dt.datetime]
    params: Callable[[Input, str], Mapping[str, Any]] | None
    retry_errors: bool
    recipient: str | None
    context: str | None
    object: str | None


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_window(spec: str | tuple[dt.time, dt.time]) -> Maintenance:
    """Parse a daily Europe/Paris window such as ``"22:00-06:00"``.

    Raises:
        ValueError: not ``HH:MM-HH:MM``, or a window of zero length.

    .. versionadded:: 0.1.0
    """
    if isinstance(spec, tuple):
        start, end = spec
    else:
        try:
            left, right = (part.strip() for part in spec.split("-"))
            start, end = dt.time.fromisoformat(left), dt.time.fromisoformat(right)
        except ValueError:
            raise ValueError(f"off_peak: {spec!r} is not like '22:00-06:00'") from None
    if start == end:
        raise ValueError("off_peak: the window starts and ends at the same time")
    return Maintenance(start, end)


@attrs.frozen
class Outcome:
    """What became of one input for one operation.

    Attributes:
        input: the input as given (an identifier or a mapping of parameters).
        operation: the operation id called.
        index: the input's position in the input sequence, from 0.
        response: the answer when the call succeeded.
        error: the typed error otherwise (a local validation error for a
            malformed identifier: nothing was sent).
        elapsed: seconds from the first attempt to the outcome, queueing included.

    .. versionadded:: 0.1.0
    """

    input: Input
    operation: str
    index: int
    response: Response[Any] | None = None
    error: ApiEntrepriseError | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.error is None

    @property
    def record(self) -> Any:
        """The typed record of a success (``response.data``), else ``None``."""
        return None if self.response is None else self.response.data

    @property
    def status(self) -> OutcomeStatus:
        """``ok``, ``not_found`` (a 404), ``invalid`` (refused locally) or ``error``."""
        if self.error is None:
            return "ok"
        if isinstance(self.error, NotFoundError):
            return "not_found"
        if isinstance(self.error, InvalidParameterError):
            return "invalid"
        return "error"

    def to_json(self) -> dict[str, Any]:
        """The checkpoint line: input, operation, status, then the data or the error."""
        line: dict[str, Any] = {
            "input": _plain(self.input),
            "operation": self.operation,
            "index": self.index,
            "status": self.status,
        }
        if self.response is not None:
            raw = self.response.raw
            line["http_status"] = self.response.http_status
            line["request_id"] = self.response.request_id
            line["data"] = raw.get("data") if isinstance(raw, dict) else raw
            if isinstance(raw, dict) and raw.get("meta"):
                line["meta"] = raw["meta"]
            if self.response.problems:
                # The data is as sent; these say which of its paths did not fit the record.
                line["problems"] = list(self.response.problems)
        if self.error is not None:
            line["error"] = _describe_error(self.error)
        return line


def _describe_error(error: ApiEntrepriseError) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, ApiError):
        out.update(
            http_status=error.http_status,
            code=error.first_error_code,
            title=error.first_error_title,
            detail=error.first_error_detail,
            provider=error.provider,
            request_id=error.request_id,
        )
    elif isinstance(error, InvalidParameterError):
        out.update(code="local_validation", parameter=error.parameter)
    if error.attempts:
        out["attempts"] = len(error.attempts)
    out["retryable"] = _worth_retrying(out)
    return out


def _worth_retrying(error: Mapping[str, Any]) -> bool:
    """Whether a rerun may get another answer for an input that ended in this error.

    The input is not at fault when the server refused the token or a
    privilege (since fixed, perhaps), ran into a conflict or a rate limit,
    failed on its side (5xx), or did not answer. A 4xx about the request
    itself (400, 404, 422, 451) or a local refusal would fail the same way.
    """
    if "retryable" in error:
        return bool(error["retryable"])
    status = error.get("http_status")
    if status is None:
        return error.get("code") != "local_validation"
    return status in (401, 403, 409, 429) or status >= 500


def _is_fatal(error: ApiEntrepriseError) -> bool:
    """Whether ``error`` is about the run (token, settings, no answer) rather than an input."""
    if isinstance(error, _FATAL):
        return True
    if isinstance(error, InvalidParameterError):
        return error.parameter in _TRACEABILITY
    if isinstance(error, TransportError):
        # No answer even after the retries: the server is unreachable or
        # silent, which says nothing about this input. (A body that is not
        # JSON is an answer, and stays an outcome.)
        from ._client import _Silence  # the client module imports this one

        return isinstance(error, _Silence)
    return False


@attrs.define
class BatchStats:
    """Live counters of a batch (read them while it runs, e.g. for a progress bar).

    Attributes:
        resumed: outcome lines found in the output file when the batch opened.
        resumed_errors: those of them with the status ``error`` (see ``retry_errors``).
        skipped: inputs of this run skipped because the output already had them
            (each occurrence of a duplicate counts, and uses up one line).
        done: outcomes produced by this run.
        ok, not_found, invalid, errors: ``done`` by status.
        unfit: those ``ok`` whose answer did not fit its record (the line has
            the data as sent and its ``problems``).
        in_flight: calls being made (queueing in the governor included).
        paused: seconds workers spent waiting for a closed window, all together.
        closed_until: when the current closed window ends (Paris time), if any.
        closed_reason: ``"off-peak window"`` or ``"maintenance of <operation>"``.
        started: :func:`anyio.current_time` when the batch opened.
    """

    resumed: int = 0
    resumed_errors: int = 0
    skipped: int = 0
    done: int = 0
    ok: int = 0
    not_found: int = 0
    invalid: int = 0
    errors: int = 0
    unfit: int = 0
    in_flight: int = 0
    paused: float = 0.0
    closed_until: dt.datetime | None = None
    closed_reason: str | None = None
    started: float = 0.0

    def count(self, outcome: Outcome) -> None:
        """Add one outcome to the totals."""
        self.done += 1
        status = outcome.status
        if status == "ok":
            self.ok += 1
            if outcome.response is not None and outcome.response.problems:
                self.unfit += 1
        elif status == "not_found":
            self.not_found += 1
        elif status == "invalid":
            self.invalid += 1
        else:
            self.errors += 1


@attrs.frozen
class _Job:
    index: int
    input: Input
    operation: str


def _plain(value: Any) -> Any:
    """An input as the output file writes it: JSON-ready, whatever the caller passed.

    Inputs come from files and data frames: ``int`` identifiers, ``None`` for
    an empty cell, a 5,000-digit number. Each one is written, never fatal.
    """
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 128 else _field(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return _field(value)


def _key(value: Any) -> str:
    # A line read back from the output must give the key of the input it was
    # written for: both go through _plain first.
    plain = _plain(value)
    if isinstance(plain, str):
        return plain.strip()
    return json.dumps(plain, sort_keys=True, ensure_ascii=False, default=str)


def _digest(operation: str, value: Input) -> int:
    raw = f"{operation}\x00{_key(value)}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class _DoneSet:
    """How many lines of each (operation, input) the output holds, and how many are claimed.

    A sorted array of distinct 64-bit digests (8 bytes each) and a parallel
    array of counts (4 bytes each): a resume of a million lines costs about
    12 MB at most, and a fresh run nothing. Each occurrence of an input in the
    rerun claims one line (:meth:`claim`), so an input listed *k* times with
    *j* lines already written is skipped *j* times and done *k - j* times.
    """

    def __init__(self) -> None:
        self._digests = array("Q")
        self._counts = array("I")
        self._lines = 0
        #: Lines whose status is ``error`` (reported, so a rerun never looks clean).
        self.errors = 0

    def __len__(self) -> int:
        """Lines loaded (claimed or not)."""
        return self._lines

    def add(self, digest: int) -> None:
        """Record one more line (call :meth:`freeze` once all are added)."""
        self._digests.append(digest)
        self._lines += 1

    def freeze(self) -> None:
        """Sort the digests and fold repeated ones into counts."""
        digests = array("Q")
        counts = array("I")
        for digest in sorted(self._digests):
            if digests and digests[-1] == digest:
                counts[-1] += 1
            else:
                digests.append(digest)
                counts.append(1)
        self._digests, self._counts = digests, counts

    def claim(self, digest: int) -> bool:
        """Whether an unclaimed line of ``digest`` is left; if so, it is claimed."""
        digests = self._digests
        i = bisect.bisect_left(digests, digest)
        if i < len(digests) and digests[i] == digest and self._counts[i]:
            self._counts[i] -= 1
            return True
        return False


def _load_checkpoint(path: pathlib.Path, retry_errors: bool = False) -> _DoneSet:
    """Read the output file's complete lines; cut off a last line left partial.

    With ``retry_errors``, error lines worth retrying are first removed from
    the file (rewritten beside it, then renamed over it), so their inputs are
    done again and the file still ends with one line per input line.

    Raises:
        ValueError: a complete line is not an outcome (not our file?).
    """
    done = _DoneSet()
    if not path.exists():
        return done
    if retry_errors:
        _drop_retryable_errors(path)
    good_end = 0
    with path.open("rb") as lines:
        number = 0
        for raw in lines:
            number += 1
            if not raw.endswith(b"\n"):
                break  # written in part when the process died; its input is done again
            try:
                line = json.loads(raw)
                done.add(_digest(line["operation"], line["input"]))
                if line.get("status") == "error":
                    done.errors += 1
            except (ValueError, KeyError, TypeError):
                if not raw.strip():
                    good_end += len(raw)
                    continue
                raise ValueError(
                    f"{path}: line {number} is not a batch outcome; "
                    "use another output file or remove it"
                ) from None
            good_end += len(raw)
    if path.stat().st_size != good_end:
        with path.open("r+b") as out:
            out.truncate(good_end)
    done.freeze()
    return done


def _drop_retryable_errors(path: pathlib.Path) -> int:
    """Rewrite ``path`` without its error lines worth retrying; return how many went."""
    kept = path.with_name(f".{path.name}.retry-errors")
    dropped = 0
    with path.open("rb") as lines, kept.open("wb") as out:
        for raw in lines:
            try:
                line = json.loads(raw)
            except ValueError:
                line = None  # partial or foreign: left for the checkpoint to judge
            if (
                isinstance(line, dict)
                and line.get("status") == "error"
                and _worth_retrying(line.get("error") or {})
            ):
                dropped += 1
                continue
            out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    if dropped:
        kept.replace(path)
    else:
        kept.unlink()
    return dropped


class _Gate:
    """Closed outside the off-peak window and during an operation's maintenance."""

    def __init__(
        self, off_peak: Maintenance | None, now: Callable[[], dt.datetime], stats: BatchStats
    ) -> None:
        # Outside [start, end) is the complement window [end, start): reuse the
        # maintenance arithmetic (Paris time, windows across midnight).
        self._closed = (
            None if off_peak is None else Maintenance(off_peak.to_hour, off_peak.from_hour)
        )
        self._now = now
        self._stats = stats

    def applies(self, endpoint: Endpoint, maintenance: bool) -> bool:
        """Whether any window concerns ``endpoint`` (else no clock is read at all)."""
        return self._closed is not None or (maintenance and endpoint.maintenance is not None)

    def _closed_for(self, endpoint: Endpoint, maintenance: bool) -> tuple[float, str] | None:
        utc = self._now()
        longest: tuple[float, str] | None = None
        if self._closed is not None:
            left = maintenance_remaining(self._closed, utc)
            if left is not None:
                longest = (left, "off-peak window")
        if maintenance and endpoint.maintenance is not None:
            left = maintenance_remaining(endpoint.maintenance, utc)
            if left is not None and (longest is None or left > longest[0]):
                longest = (left, f"maintenance of {endpoint.operation_id}")
        return longest

    async def wait(self, endpoint: Endpoint, *, maintenance: bool = True) -> None:
        """Return once calls to ``endpoint`` may be made."""
        stats = self._stats
        while (closed := self._closed_for(endpoint, maintenance)) is not None:
            left, reason = closed
            stats.closed_reason = reason
            until = paris_time(self._now() + dt.timedelta(seconds=left))
            if stats.closed_until is None:
                # Once per pause, not per worker nap: a batch that waits says so.
                _logger.info(
                    "batch waiting for the %s until %s (Paris time)",
                    reason,
                    f"{until:%Y-%m-%d %H:%M}",
                    extra={"closed_reason": reason, "closed_until": until.isoformat()},
                )
            stats.closed_until = until.replace(microsecond=0)
            nap = min(left, _MAX_NAP)
            started = anyio.current_time()
            await anyio.sleep(nap)
            stats.paused += anyio.current_time() - started
        stats.closed_reason = None
        stats.closed_until = None


def _counters_delta(now: Counters, then: Counters) -> Counters:
    return Counters(
        grants=now.grants - then.grants,
        waits=now.waits - then.waits,
        wait_time=now.wait_time - then.wait_time,
        rate_limited=now.rate_limited - then.rate_limited,
        rejections=now.rejections - then.rejections,
        wakeups=now.wakeups - then.wakeups,
    )


class Batch:
    """A batch of calls; use it as ``async with client.batch(...) as outcomes``.

    Build it with :meth:`AsyncClient.batch`. Entering it starts the workers;
    iterating yields :class:`Outcome` objects in completion order; leaving it
    (normally, by ``break`` or by an exception) stops whatever is left. An
    error that concerns the whole run (401, 403, expired token, missing
    traceability, a server that does not answer) stops the batch and is
    raised by the iteration, after the outcomes already obtained; no line is
    written for the inputs it did not finish, so a rerun does them.

    Args:
        client: an open client; the batch uses a copy of it with retries on,
            no admission deadline and its own maintenance handling.
        operations: an operation id, or several: each input is then called
            on each of them (one outcome per input and operation).
        inputs: identifiers (a SIRET feeds SIREN operations with its first
            nine digits) or mappings of parameters, sync or async iterable,
            read lazily.
        concurrency: worker tasks; by default as many as the operations'
            buckets admit in a period (at most 100), so the governor, not the
            latency, sets the pace.
        retry: the retry policy (:data:`BATCH_RETRY` by default; ``None`` for none).
        off_peak: a daily window in Paris time, such as ``"22:00-06:00"``,
            outside which no call starts.
        wait_maintenance: hold calls during an operation's maintenance window
            instead of letting them fail.
        output: a JSON-lines file; every outcome is appended and flushed, and
            the inputs it already holds are skipped (resume). An input listed
            *k* times is called *k* times and written *k* times, in a fresh
            run as in a resumed one: on resume, each line already in the
            output accounts for one occurrence, so a rerun over the same
            inputs completes the file to exactly one line per input line and
            operation. (Identical occurrences are interchangeable: the
            ``index`` of a line names one of them.)
        fsync: also ``fsync`` each line (survives a power cut, costs a disk wait).
        now: the wall clock (aware UTC), read only to place the windows; all
            waiting uses anyio's clock.
        params: ``(input, operation) -> parameters`` when inputs are not
            plain identifiers of a one-parameter operation.
        retry_errors: with ``output``, do again the inputs whose line is an
            error worth retrying (401, 403, 409, 429, 5xx, no answer): their
            lines are removed from the file first.
        recipient, context, object: traceability for every call of the batch.

    Raises:
        UnknownOperationError: an operation id is not in the catalogue.
        ValueError: an option is invalid (``off_peak``, ``concurrency``).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        client: AsyncClient,
        operations: Operations,
        inputs: Inputs,
        *,
        concurrency: int | None = None,
        retry: RetryPolicy | UseDefault | None = USE_DEFAULT,
        off_peak: str | tuple[dt.time, dt.time] | None = None,
        wait_maintenance: bool = True,
        output: str | os.PathLike[str] | None = None,
        fsync: bool = False,
        now: Callable[[], dt.datetime] = _utc_now,
        params: Callable[[Input, str], Mapping[str, Any]] | None = None,
        retry_errors: bool = False,
        recipient: str | None = None,
        context: str | None = None,
        object: str | None = None,
    ) -> None:
        names = [operations] if isinstance(operations, str) else list(operations)
        if not names:
            raise ValueError("operations: give at least one operation id")
        if len(set(names)) != len(names):
            raise ValueError("operations: an operation is listed twice")
        self._endpoints = {name: get_endpoint(name) for name in names}  # UnknownOperationError
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._operations = tuple(names)
        self._inputs = inputs
        self._concurrency = concurrency or self._default_concurrency(client)
        policy = BATCH_RETRY if retry is USE_DEFAULT else retry
        # The batch waits out maintenance itself (with the injectable clock), and
        # never gives up on admission: a batch is made to queue.
        self._client = client.with_options(
            retry=policy,
            retry_rate_limited=True,
            max_wait=None,
            check_maintenance=False,
            recipient=USE_DEFAULT if recipient is None else recipient,
            context=USE_DEFAULT if context is None else context,
            object=USE_DEFAULT if object is None else object,
        )
        self._governor = client.governor
        self._params = params
        self._output = None if output is None else pathlib.Path(output)
        self._fsync = fsync
        self._retry_errors = retry_errors
        self.stats = BatchStats()
        window = None if off_peak is None else parse_window(off_peak)
        self._gate = _Gate(window, now, self.stats)
        self._wait_maintenance = wait_maintenance
        self._done = _DoneSet()
        self._file: BinaryIO | None = None
        self._results: MemoryObjectReceiveStream[Outcome] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._failure: BaseException | None = None
        self._counters_start = Counters()
        self._entered = False

    def _default_concurrency(self, client: AsyncClient) -> int:
        """As many workers as the buckets let through in a period (throughput = limits)."""
        limits = client.governor.limits
        buckets = dict(limits.bucket_for(e) for e in self._endpoints.values())
        return max(1, min(sum(buckets.values()), limits.ip, _MAX_DEFAULT_WORKERS))

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<Batch {','.join(self._operations)} workers={self._concurrency} done={s.done} "
            f"skipped={s.skipped} in_flight={s.in_flight}>"
        )

    @property
    def concurrency(self) -> int:
        """The number of worker tasks."""
        return self._concurrency

    @property
    def operations(self) -> tuple[str, ...]:
        """The operations called for each input."""
        return self._operations

    def governor_counters(self) -> Counters:
        """The governor's counters since this batch opened (grants, waits, 429s...)."""
        return _counters_delta(self._governor.counters, self._counters_start)

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a Batch runs once; build a new one with client.batch()")
        self._entered = True
        if self._output is not None:
            output = self._output
            self._done = await anyio.to_thread.run_sync(
                _load_checkpoint, output, self._retry_errors
            )
            self.stats.resumed = len(self._done)
            self.stats.resumed_errors = self._done.errors
            self._file = await anyio.to_thread.run_sync(output.open, "ab")
        self.stats.started = anyio.current_time()
        self._counters_start = self._governor.counters
        send, receive = anyio.create_memory_object_stream[Outcome](self._concurrency)
        self._results = receive
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run, send)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            group = self._task_group
            if group is None:
                return None
            group.cancel_scope.cancel()
            if exc is not None and not isinstance(exc, anyio.get_cancelled_exc_class()):
                # The body's own error (or one the iteration raised) goes out as
                # it is, not wrapped in an ExceptionGroup by the task group.
                await group.__aexit__(None, None, None)
                return None
            return await group.__aexit__(exc_type, exc, tb)
        finally:
            if self._results is not None:
                self._results.close()
            if self._file is not None:
                self._file.close()

    def __aiter__(self) -> AsyncIterator[Outcome]:
        if self._results is None:
            raise RuntimeError("use `async with client.batch(...) as outcomes:` to run a batch")
        return self

    async def __anext__(self) -> Outcome:
        results = self._results
        if results is None:
            raise RuntimeError("use `async with client.batch(...) as outcomes:` to run a batch")
        try:
            # The fast path skips a checkpoint per outcome: the workers already
            # yield on every call, so the loop never starves.
            try:
                outcome = results.receive_nowait()
            except anyio.WouldBlock:
                outcome = await results.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure from None
            raise StopAsyncIteration from None
        await self._checkpoint(outcome)
        self.stats.count(outcome)
        return outcome

    async def _checkpoint(self, outcome: Outcome) -> None:
        """Append the outcome's line and flush it before anyone sees the outcome."""
        out = self._file
        if out is None:
            return
        line = json.dumps(outcome.to_json(), ensure_ascii=False, separators=(",", ":"), default=str)
        # One small write and a flush land in the page cache in microseconds: not
        # worth a thread hop each. The page cache survives kill -9; fsync (in a
        # thread, it waits for the disk) is for surviving a power cut too.
        out.write(line.encode() + b"\n")
        out.flush()
        if self._fsync:
            await anyio.to_thread.run_sync(os.fsync, out.fileno())

    # -- inside the task group -------------------------------------------------------

    async def _run(self, results: MemoryObjectSendStream[Outcome]) -> None:
        """Feeder and workers; any failure ends the outcome stream and is raised by it."""
        jobs_send, jobs_receive = anyio.create_memory_object_stream[_Job](self._concurrency)
        async with results:
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._feed, jobs_send)
                    for _ in range(self._concurrency):
                        group.start_soon(self._work, jobs_receive.clone(), results.clone())
                    jobs_receive.close()
            except BaseExceptionGroup as group_error:
                self._failure = _first_failure(group_error)
                if self._failure is None:
                    raise

    async def _feed(self, jobs: MemoryObjectSendStream[_Job]) -> None:
        inputs = self._inputs
        async with jobs:
            if not isinstance(inputs, AsyncIterable):
                for index, item in enumerate(inputs):
                    await self._offer(jobs, index, item)
                return
            iterator = aiter(inputs)
            try:
                index = 0
                async for item in iterator:
                    await self._offer(jobs, index, item)
                    index += 1
            finally:
                # Close the caller's async generator here, in its task, even when
                # cancelled: left to the garbage collector, it would be finalised
                # outside any event loop context.
                close = getattr(iterator, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True):
                        await close()

    async def _offer(self, jobs: MemoryObjectSendStream[_Job], index: int, item: Input) -> None:
        done = self._done
        for operation in self._operations:
            # One written line accounts for one occurrence of the input, not all.
            if done and done.claim(_digest(operation, item)):
                self.stats.skipped += 1
                # Skipping a million done inputs must not freeze the event loop.
                if self.stats.skipped % 1000 == 0:
                    await anyio.lowlevel.checkpoint()
                continue
            job = _Job(index, item, operation)
            try:
                jobs.send_nowait(job)
            except anyio.WouldBlock:
                await jobs.send(job)

    async def _work(
        self, jobs: MemoryObjectReceiveStream[_Job], results: MemoryObjectSendStream[Outcome]
    ) -> None:
        async with jobs, results:
            while True:
                try:
                    job = jobs.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        job = await jobs.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                outcome = await self._execute(job)
                try:
                    results.send_nowait(outcome)
                except anyio.WouldBlock:
                    await results.send(outcome)

    def _params_for(self, job: _Job, endpoint: Endpoint) -> dict[str, Any]:
        if self._params is not None:
            try:
                given = dict(self._params(job.input, job.operation))
            except Exception as exc:
                raise InvalidParameterError(
                    "input", f"the params function failed: {type(exc).__name__}: {exc}"
                ) from exc
            return _keywords(given)
        if isinstance(job.input, Mapping):
            return _keywords(dict(job.input))
        names = endpoint.path_params
        if len(names) != 1:
            raise InvalidParameterError(
                "input",
                f"{job.operation} takes {len(names)} path parameters; "
                "give mappings as inputs or a params function",
            )
        param = names[0]
        # Anything else is the identifier itself (a str, an int from a data frame,
        # None from an empty cell): the client validates it, refuses and audits it.
        value: Any = job.input
        if param.kind is IdKind.SIREN and isinstance(value, str) and len(value) <= 64:
            # A SIRET's first nine digits are its company's SIREN: one file of
            # SIRETs can feed operations on both.
            compact = "".join(value.split())
            if len(compact) == 14 and compact.isascii() and compact.isdigit():
                value = compact[:9]
        return {param.name: value}

    async def _execute(self, job: _Job) -> Outcome:
        endpoint = self._endpoints[job.operation]
        if self._gate.applies(endpoint, self._wait_maintenance):
            await self._gate.wait(endpoint, maintenance=self._wait_maintenance)
        stats = self.stats
        started = anyio.current_time()
        stats.in_flight += 1
        try:
            params = self._params_for(job, endpoint)
            requeues = 0
            while True:
                try:
                    response = await self._client.call(job.operation, **params)
                except RateLimitError as exc:
                    # Paused between grant and send: nothing left; queue again.
                    if exc.local and requeues < _LOCAL_REQUEUES:
                        requeues += 1
                        continue
                    raise
                break
        except ApiEntrepriseError as exc:
            if _is_fatal(exc):
                raise
            return Outcome(job.input, job.operation, job.index, error=exc, elapsed=_since(started))
        finally:
            stats.in_flight -= 1
        return Outcome(job.input, job.operation, job.index, response, elapsed=_since(started))


def _keywords(params: dict[Any, Any]) -> dict[str, Any]:
    """Parameters whose names can be keywords of a call."""
    for name in params:
        if not isinstance(name, str):
            raise InvalidParameterError("input", f"parameter names are strings, not {name!r:.40}")
    return params


def _since(started: float) -> float:
    return anyio.current_time() - started


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first real error of a task group (cancellations are echoes of it)."""
    cancelled = anyio.get_cancelled_exc_class()
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_failure(exc)
            if inner is not None:
                return inner
        elif not isinstance(exc, cancelled):
            return exc
    return None
