"""Fault injection against the emulator, in virtual time: retries, coalescing, circuit, cancellation.

Invariants checked throughout: this client causes no 429 and no ban, every
call ends within its deadline with a result or a typed error, and no task or
governor slot is left behind.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import anyio
import httpx
import pytest

from apientreprise_async import (
    ApiEntrepriseError,
    AsyncClient,
    ProviderError,
    ProviderUnavailableError,
    Response,
    ServiceUnreachable,
    Timeouts,
    TransportError,
)
from apientreprise_async._circuit import CircuitPolicy
from apientreprise_async._retry import RetryPolicy
from apientreprise_async.testing import COMPANIES, Emulator, Faults

from .conftest import RECIPIENT, TOKEN, make_jwt

pytestmark = pytest.mark.anyio

SIRENS = [c.siren for c in COMPANIES]
# A fixed wall clock (mid-window, a weekday morning in Paris): runs do not depend on when
# the suite starts, nor on the maintenance windows of the day.
START = 1_800_000_000.0 + 17.0
OP = "api_entreprise_v4_insee_unites_legales"


@pytest.fixture
def anyio_backend() -> Any:
    """Hours of traffic in milliseconds: trio with an autojumping clock."""
    from trio.testing import MockClock

    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def client_for(emulator: Emulator, token: str = TOKEN, **kw: Any) -> AsyncClient:
    emulator.add_token(token)
    kw.setdefault("recipient", RECIPIENT)
    kw.setdefault("context", "resilience")
    kw.setdefault("object", "faults")
    return AsyncClient(
        token=token, transport=emulator.transport(), base_url="https://emulator.test", **kw
    )


async def run_calls(
    client: AsyncClient, count: int, *, deadline: float
) -> list[tuple[float, Response[Any] | ApiEntrepriseError]]:
    """``count`` concurrent calls with distinct objects; each outcome with its duration."""
    outcomes: list[tuple[float, Response[Any] | ApiEntrepriseError]] = []

    async def one(i: int) -> None:
        started = anyio.current_time()
        try:
            result: Response[Any] | ApiEntrepriseError = await client.call(
                OP, siren=SIRENS[i % len(SIRENS)], object=f"dossier-{i}"
            )
        except ApiEntrepriseError as exc:
            result = exc
        outcomes.append((anyio.current_time() - started, result))

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    assert count == len(outcomes)
    for took, _ in outcomes:
        assert took <= deadline
    return outcomes


def assert_clean(emulator: Emulator, client: AsyncClient) -> None:
    """No 429, no ban, no waiter or in-flight call left in the governor."""
    assert () == emulator.calls(token=TOKEN, status=429)
    assert emulator.banned_until() is None
    for bucket in client.governor.snapshot().buckets.values():
        assert 0 == bucket.queued
        assert 0 == bucket.in_flight


async def test_a_502_504_storm_is_absorbed() -> None:
    """30% provider errors: retries recover nearly everything, within the rules."""
    emulator = Emulator(
        faults=Faults(share_502=0.15, share_504=0.15, retry_in=2.0), seed=3, start_epoch=START
    )
    # 400 calls and their retries need two windows of 250: the deadline covers queueing too.
    policy = RetryPolicy(max_attempts=4, base_delay=0.5, deadline=300.0, seed=1)
    async with client_for(emulator, retry=policy) as client:
        outcomes = await run_calls(client, 400, deadline=300.0 + 15.0)
        stats = client.stats()
        assert_clean(emulator, client)
    failures = [r for _, r in outcomes if isinstance(r, ApiEntrepriseError)]
    assert len(failures) <= 12, [str(f) for f in failures]
    for failure in failures:
        assert isinstance(failure, ProviderError | ProviderUnavailableError)
        assert 1 <= len(failure.attempts) <= 4
        assert (
            "attempts" in " ".join(getattr(failure, "__notes__", [])) or len(failure.attempts) == 1
        )
    assert stats.retries > 60  # about 30% of 400 first attempts failed
    assert len(emulator.requests) == stats.attempts


async def test_latency_spikes_and_dropped_connections() -> None:
    """Slow providers (504 after 10 s) and cut connections are retried, never piled up."""

    def latency(rng: random.Random) -> float:
        return 12.0 if rng.random() < 0.08 else rng.uniform(0.05, 0.6)

    emulator = Emulator(
        faults=Faults(latency=latency, share_dropped=0.04), seed=11, start_epoch=START
    )
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, deadline=300.0, seed=2)
    async with client_for(emulator, retry=policy) as client:
        outcomes = await run_calls(client, 300, deadline=300.0 + 15.0)
        assert_clean(emulator, client)
    ok = [r for _, r in outcomes if isinstance(r, Response)]
    assert len(ok) >= 295
    assert () == emulator.calls(token=TOKEN, status=409)
    assert any(r.outcome == "dropped" for r in emulator.requests)


async def test_identical_calls_share_one_request() -> None:
    """50 concurrent identical calls reach the server once; no 409."""
    emulator = Emulator(faults=Faults(latency=0.5), start_epoch=START)
    results: list[Response[Any]] = []
    async with client_for(emulator) as client:

        async def one() -> None:
            results.append(await client.call(OP, siren=SIRENS[0]))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        stats = client.stats()
        alone = await client.call(OP, siren=SIRENS[0], coalesce=False)
    assert 50 == len(results)
    assert all(r is results[0] for r in results)
    assert 2 == len(emulator.requests)  # the shared one, then the opted-out one
    assert 49 == stats.coalesced
    assert alone.data == results[0].data


async def test_a_ban_caused_by_another_client_opens_the_circuit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A misbehaving neighbour gets the IP banned; this client stops sending into silence."""
    caplog.set_level(logging.WARNING, logger="apientreprise_async")
    emulator = Emulator(seed=5, start_epoch=START)
    rogue = make_jwt({"sub": "rogue"})
    emulator.add_token(rogue)
    circuit = CircuitPolicy(threshold=3, cooldown=120.0, max_cooldown=600.0)
    async with client_for(emulator, circuit=circuit, timeouts=Timeouts(json=5.0)) as client:
        first = await client.call(OP, siren=SIRENS[0])
        assert 200 == first.http_status
        # The neighbour ignores its 429s, as a naive loop would.
        async with httpx.AsyncClient(
            transport=emulator.transport(),
            base_url="https://emulator.test",
            headers={"Authorization": f"Bearer {rogue}"},
            timeout=1.0,
        ) as raw:
            params = {"recipient": RECIPIENT, "context": "rogue", "object": "loop"}
            for i in range(300):
                try:
                    await raw.get(f"/v4/insee/sirene/unites_legales/{SIRENS[i % 5]}", params=params)
                except httpx.ReadTimeout:
                    break
                await anyio.sleep(0.01)  # calls at one instant could not have seen the 429
        assert emulator.banned_until() is not None
        banned_at = anyio.current_time()
        outcomes: list[BaseException] = []
        for i in range(20):
            try:
                await client.call(OP, siren=SIRENS[i % 5], object=f"after-ban-{i}")
            except (TransportError, ServiceUnreachable) as exc:
                outcomes.append(exc)
            await anyio.sleep(10)
        mine_after = [r for r in emulator.calls(token=TOKEN) if r.monotonic >= banned_at - 1e-9]
    assert 20 == len(outcomes)
    assert sum(isinstance(e, ServiceUnreachable) for e in outcomes) >= 15
    # 3 calls to notice the silence, then one probe per cool-down (120 s, then 240 s).
    assert len(mine_after) <= 3 + 2
    assert () == emulator.calls(token=TOKEN, status=429)
    warnings = [r for r in caplog.records if "banned" in r.getMessage()]
    assert 1 <= len(warnings) <= 3


async def test_cancelled_callers_free_their_places() -> None:
    """Cancelling callers mid-flight or mid-queue leaves no task, waiter or slot behind."""
    emulator = Emulator(faults=Faults(latency=2.0), start_epoch=START)
    async with client_for(emulator) as client:
        with anyio.move_on_after(1.0):
            async with anyio.create_task_group() as tg:
                for i in range(600):  # more than a window's worth: some wait in the queue
                    tg.start_soon(lambda i=i: client.call(OP, siren=SIRENS[i % 5], object=f"c{i}"))
        snapshot = client.governor.snapshot()
        for bucket in snapshot.buckets.values():
            assert 0 == bucket.queued
            assert 0 == bucket.in_flight
        # Calls that never left do not count: the bucket still has room for new calls.
        sent = len(emulator.requests)
        assert sent <= 250
        after = await client.call(OP, siren=SIRENS[0], object="after")
        assert 200 == after.http_status
    assert_clean(emulator, client)


async def test_calls_with_different_extra_headers_are_not_shared() -> None:
    """Coalescing keys on the headers a caller adds, not only on the URL."""
    emulator = Emulator(faults=Faults(latency=0.5), start_epoch=START)
    async with client_for(emulator) as client:
        path = f"/v4/insee/sirene/unites_legales/{SIRENS[0]}"
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.get(path))
            tg.start_soon(lambda: client.get(path, headers={"Cache-Control": "no-cache"}))
            tg.start_soon(lambda: client.get(path, headers={"X-Trace": "a"}))
            tg.start_soon(lambda: client.get(path, headers={"X-Trace": "a"}))
        stats = client.stats()
    assert 3 == len(emulator.requests)
    assert 1 == stats.coalesced
