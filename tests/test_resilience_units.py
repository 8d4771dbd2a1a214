"""Retry policy, coalescer and circuit on their own (the client-level tests use the emulator)."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest
from trio.testing import MockClock

from apientreprise_async import (
    ConflictError,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    ServiceUnreachable,
    TransportError,
    ValidationError,
)
from apientreprise_async._circuit import Circuit, CircuitPolicy
from apientreprise_async._coalesce import Coalescer
from apientreprise_async._retry import RetryPolicy

pytestmark = pytest.mark.anyio

virtual_time = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mock")],
)


def provider_error(code: str, retry_in: float | None = None) -> ProviderError:
    meta = {"provider": "X"} if retry_in is None else {"retry_in": retry_in}
    return ProviderError("x", http_status=502, errors=[{"code": code, "meta": meta}])


def test_what_is_retried() -> None:
    """Transient failures are retried; other 4xx and permanent 502s are not."""
    policy = RetryPolicy()
    assert policy.retryable(RateLimitError("x", http_status=429))
    assert not policy.retryable(RateLimitError("x", local=True))
    assert policy.retryable(ConflictError("x", http_status=409))
    assert policy.retryable(ProviderUnavailableError("x", http_status=504))
    assert policy.retryable(TransportError("timeout"))
    assert not policy.retryable(ServiceUnreachable("open"))
    assert policy.retryable(provider_error("01999"))
    assert policy.retryable(provider_error("04502"))
    assert not policy.retryable(provider_error("04503"))
    assert not policy.retryable(provider_error("03501"))
    assert not policy.retryable(NotFoundError("x", http_status=404))
    assert not policy.retryable(ValidationError("x", http_status=422))
    assert not RetryPolicy(rate_limited=False).retryable(RateLimitError("x", http_status=429))


def test_backoff_is_jittered_capped_and_honours_retry_in() -> None:
    """Full jitter under an exponential ceiling; meta.retry_in is a floor."""
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0, seed=7)
    for attempt in range(1, 8):
        ceiling = min(5.0, 2 ** (attempt - 1))
        delays = [policy.delay(attempt, TransportError("t")) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the range
    error = ProviderUnavailableError(
        "x", http_status=504, errors=[{"code": "00501", "meta": {"retry_in": 10}}]
    )
    assert policy.delay(1, error) >= 10
    assert 0 == policy.delay(3, RateLimitError("x", http_status=429))
    same = [RetryPolicy(seed=3).delay(2, TransportError("t")) for _ in range(2)]
    assert same[0] == same[1]


async def test_coalescer_shares_one_run() -> None:
    """Concurrent identical keys run once; every caller gets the result."""
    coalescer: Coalescer[int] = Coalescer()
    runs = 0
    gate = anyio.Event()
    results: list[tuple[int, bool]] = []

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    async def caller() -> None:
        results.append(await coalescer.run("k", work))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert 1 == coalescer.in_flight()
        gate.set()
    assert 1 == runs
    assert [42] * 5 == [r for r, _ in results]
    assert 4 == sum(shared for _, shared in results)
    assert 0 == coalescer.in_flight()


async def test_coalescer_shares_errors_and_survives_leader_cancellation() -> None:
    """Followers get the leader's exception; if the leader is cancelled one of them takes over."""
    coalescer: Coalescer[str] = Coalescer()

    async def boom() -> str:
        await anyio.lowlevel.checkpoint()
        raise NotFoundError("nope", http_status=404)

    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await coalescer.run("e", boom)
        except NotFoundError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(caller)
    assert 3 == len(errors)

    started = anyio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep(0.05 if calls == 1 else 0)
        return f"run{calls}"

    got: list[str] = []
    async with anyio.create_task_group() as tg:
        leader = anyio.CancelScope()

        async def lead() -> None:
            with leader:
                await coalescer.run("c", slow)

        async def follow() -> None:
            got.append((await coalescer.run("c", slow))[0])

        tg.start_soon(lead)
        await started.wait()
        tg.start_soon(follow)
        await anyio.wait_all_tasks_blocked()
        leader.cancel()
    assert ["run2"] == got
    assert 0 == coalescer.in_flight()


@virtual_time
async def test_circuit_opens_probes_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    """N silent calls open it (one warning); after the cool-down one probe decides."""
    caplog.set_level(logging.INFO, logger="apientreprise_async")
    circuit = Circuit(CircuitPolicy(threshold=3, cooldown=10, max_cooldown=25))
    for _ in range(3):
        probe = circuit.before_call()
        circuit.silent(probe)
    assert "open" == circuit.state
    with pytest.raises(ServiceUnreachable, match="possible IP ban"):
        circuit.before_call()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "banned" in warnings[0].getMessage()
    await anyio.sleep(10)
    assert "half-open" == circuit.state
    assert circuit.before_call() is True
    with pytest.raises(ServiceUnreachable):
        circuit.before_call()  # only one probe at a time
    circuit.silent(True)  # the probe met silence too: open for twice as long
    await anyio.sleep(19)
    with pytest.raises(ServiceUnreachable):
        circuit.before_call()
    await anyio.sleep(1)
    probe = circuit.before_call()
    circuit.answered(probe)
    assert "closed" == circuit.state
    assert circuit.before_call() is False
