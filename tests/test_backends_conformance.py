"""The shared backend conformance suite, run by the in-memory backend (Redis: test_redis.py)."""

from __future__ import annotations

from typing import Any

import pytest
from trio.testing import MockClock

from apientreprise_async.backends import InMemoryBackend
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
