"""Share one request between concurrent identical calls.

The API answers 409 to a request identical to one it is still processing;
sending it once and handing the result to every caller avoids that and
spends one unit of quota instead of several. No background task is used: the
first caller (the leader) does the work in its own task, the others wait on
an event; if the leader is cancelled, one of the waiters takes over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["Coalescer"]

T = TypeVar("T")


class _Flight:
    __slots__ = ("done", "error", "result", "settled")

    def __init__(self) -> None:
        # Made by the first follower: most calls have none, and an event costs
        # a lookup of the running backend.
        self.done: anyio.Event | None = None
        self.settled = False
        self.result: Any = None
        self.error: BaseException | None = None


class Coalescer(Generic[T]):
    """Run at most one call per key at a time; concurrent callers share its outcome."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}

    def in_flight(self) -> int:
        """Number of distinct requests currently running."""
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``work`` or join the identical call in flight.

        Returns the result and whether it was shared from another caller.
        """
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, work), False
            done = flight.done
            if done is None:
                done = flight.done = anyio.Event()
            await done.wait()
            if flight.settled:
                if flight.error is not None:
                    raise flight.error
                return flight.result, True
            # The leader was cancelled before it finished: try again, maybe as leader.

    async def _lead(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        flight = _Flight()
        self._flights[key] = flight
        try:
            result = await work()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            flight.error = exc
            flight.settled = True
            raise
        else:
            flight.result = result
            flight.settled = True
            return result
        finally:
            del self._flights[key]
            if flight.done is not None:
                flight.done.set()


class InFlight:
    """One request at a time per server-side identity (token, path, non-traceability params).

    The server answers 409 while an identical request is being processed,
    traceability aside. Calls that differ only by ``object`` or ``context``
    cannot share an answer (each must be audited as asked), so they take
    turns instead: the second leaves when the first has its answer.
    """

    def __init__(self) -> None:
        # Per identity being served, the events of the callers waiting for it (FIFO).
        # No lock object: an identity nobody else uses (nearly every call) costs a
        # dict entry and no checkpoint.
        self._queues: dict[Hashable, deque[anyio.Event]] = {}

    def turn(self, key: Hashable) -> _Turn:
        """Hold the turn for ``key`` (FIFO among waiters), as an async context manager."""
        return _Turn(self, key)

    def _pass(self, key: Hashable) -> None:
        """The holder leaves: hand the turn to the next waiter, or forget the identity."""
        queue = self._queues[key]
        if queue:
            queue.popleft().set()
        else:
            del self._queues[key]


class _Turn:
    """The turn of one caller for one identity."""

    __slots__ = ("_key", "_owner")

    def __init__(self, owner: InFlight, key: Hashable) -> None:
        self._owner = owner
        self._key = key

    async def __aenter__(self) -> None:
        queues = self._owner._queues
        queue = queues.get(self._key)
        if queue is None:
            queues[self._key] = deque()
            return
        event = anyio.Event()
        queue.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self._owner._pass(self._key)  # handed the turn while cancelled: pass it on
            else:
                queue.remove(event)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._pass(self._key)
