"""The shared backend conformance suite, run by the in-memory backend (Redis: test_redis.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from apientreprise_async.backends import Blocked, Feedback, Grant, InMemoryBackend, SlotRequest
from apientreprise_async.testing import check_backend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> Any:
    """Virtual time: the suite's waits cost nothing."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


async def test_in_memory_backend_conforms() -> None:
    """Every check passes, with exact times (tolerance zero)."""
    backend = InMemoryBackend()
    names = await check_backend(lambda: backend, tolerance=0.0)
    assert 13 == len(names)


class Stalling(InMemoryBackend):
    """An in-memory store whose acquisitions answer ``delay`` seconds late, as a loaded
    runner or a store failing over does."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def acquire(self, requests: Sequence[SlotRequest]) -> Grant | Blocked:
        await anyio.sleep(self.delay)
        return await super().acquire(requests)


class ForgetsSeeds(InMemoryBackend):
    """A store that drops what a seed teaches (a broken backend)."""

    async def seed(self, request: SlotRequest, feedback: Feedback) -> None:
        return None


async def test_a_stall_past_a_checks_deadline_reruns_it_with_a_longer_hold() -> None:
    """Answers later than the default hold (0.25 s) make the timed checks inconclusive, not
    failed: they run again with a longer hold, and pass."""
    backend = Stalling(delay=0.3)
    assert 13 == len(await check_backend(lambda: backend, tolerance=0.0))


async def test_stalls_at_every_try_are_reported_not_passed() -> None:
    """A store always slower than the checks' deadlines fails, naming the check."""
    backend = Stalling(delay=60.0)
    with pytest.raises(AssertionError, match=r"inconclusive 3 times"):
        await check_backend(lambda: backend, tolerance=0.0)


async def test_a_broken_backend_fails_whatever_the_timing() -> None:
    """A seed that teaches nothing fails the seed check, however long the hold."""
    backend = ForgetsSeeds()
    with pytest.raises(AssertionError, match=r"^seed: A seeded bucket"):
        await check_backend(lambda: backend, tolerance=0.0)
