"""A batch of 200,000 inputs runs in constant memory (tracemalloc), against a very fast fake.

The figures are recorded in benchmarks/README.md ("Batch runner").
"""

from __future__ import annotations

import gc
import pathlib
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from apientreprise_async import Governor, Limits
from apientreprise_async._batch import Batch
from apientreprise_async.backends import InMemoryBackend

pytestmark = pytest.mark.anyio


class _Answer:
    """A constant successful answer, shaped as the parts of Response a batch reads."""

    raw: dict[str, Any] = {"data": {"siren": "000000000"}}  # noqa: RUF012 - a constant
    http_status = 200
    request_id = None
    data = None
    problems = ()


class FastClient:
    """Just enough of AsyncClient for the batch runner: answers at once, no I/O."""

    def __init__(self) -> None:
        self.governor = Governor(Limits(period=1.0), backend=InMemoryBackend())
        self.calls = 0

    def with_options(self, **_: Any) -> FastClient:
        return self

    async def call(self, operation: str, **params: Any) -> Any:
        self.calls += 1
        if self.calls % 8 == 0:  # a real call yields to the loop; yielding less is faster
            await anyio.lowlevel.checkpoint()
        return _Answer


def ids(count: int) -> Iterator[str]:
    """``count`` identifiers, generated one at a time."""
    return (f"{n:09d}" for n in range(count))


async def peak_of(count: int, output: pathlib.Path | None, *, trace: bool = True) -> int:
    """Peak traced memory (bytes) of a batch of ``count`` inputs, its wall time printed."""
    fake = FastClient()
    gc.collect()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        batch = Batch(
            fake,  # type: ignore[arg-type]
            "api_entreprise_v4_insee_unites_legales",
            ids(count),
            concurrency=32,
            output=output,
        )
        async with batch as outcomes:
            async for _ in outcomes:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert count == fake.calls
    assert count == outcomes.stats.done
    where = "checkpointed" if output else "in memory"
    print(f"{count:>7,} inputs {where:<12} peak {peak / 1024:6.0f} KiB  {elapsed:5.1f} s")
    return peak


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_peak_memory_does_not_grow_with_the_inputs(tmp_path: pathlib.Path) -> None:
    """200,000 inputs peak at the memory of 10,000; checkpointing to a file adds nothing."""
    await peak_of(1_000, None, trace=False)  # imports and caches, out of the measure
    small = await peak_of(10_000, None)
    large = await peak_of(200_000, None)
    written = await peak_of(10_000, tmp_path / "out.jsonl")
    # Twenty times the inputs: the same peak, give or take allocator noise.
    assert large <= small * 1.25 + 64 * 1024, (small, large)
    assert written <= small * 1.25 + 64 * 1024, (small, written)
    with (tmp_path / "out.jsonl").open("rb") as lines:
        assert 10_000 == sum(1 for _ in lines)
