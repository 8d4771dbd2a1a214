"""The governor's rules one by one, in virtual time (trio's MockClock, autojump)."""

from __future__ import annotations

import logging
import math
from email.utils import formatdate
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from apientreprise_async._errors import RateLimitError
from apientreprise_async._governor import (
    Governor,
    Limits,
    default_backend,
    default_governor,
)
from apientreprise_async.backends import GovernorBackend, InMemoryBackend

from ._fake_throttle import EPOCH, json_endpoint, wall_clock

pytestmark = pytest.mark.anyio

PERIOD = 10.0
HOLD = PERIOD * 1.005
JSON = json_endpoint("op_a")
OTHER = json_endpoint("op_b")


@pytest.fixture
def anyio_backend() -> Any:
    """Virtual time: every sleep jumps the clock at once."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def governor(limit: int = 3, *, ip: int = 1000, slow_start: bool = False, **kw: Any) -> Governor:
    """A governor with its own backend and a small JSON limit."""
    limits = Limits(
        groups={"json_resources_entreprise": limit},
        ip=ip,
        period=PERIOD,
        slow_start=slow_start,
        **kw,
    )
    return Governor(limits, backend=InMemoryBackend(), wall_clock=wall_clock)


def headers(limit: int, remaining: int, reset_in: float, **extra: str) -> dict[str, str]:
    """RateLimit headers as the server sends them (epoch reset), dated on the server's clock."""
    now = EPOCH + anyio.current_time()
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": f"{now + reset_in:.3f}",
        "Date": formatdate(now, usegmt=True),
        **extra,
    }


async def call(
    gov: Governor,
    endpoint: Any = JSON,
    *,
    token: str = "tok",
    latency: float = 0.0,
    status: int = 200,
    answer: dict[str, str] | None = None,
    log: list[float] | None = None,
) -> None:
    """One call: record the send time, wait ``latency``, observe the answer."""
    async with gov.permit(token, endpoint) as permit:
        permit.sending()
        if log is not None:
            log.append(anyio.current_time())
        await anyio.sleep(latency)
        permit.observe(status, answer or {})


async def test_uncontended_calls_are_granted_at_once() -> None:
    """Up to the limit, calls go without waiting."""
    gov = governor(3)
    for _ in range(3):
        await call(gov)
    assert 0.0 == anyio.current_time()
    assert 3 == gov.counters.grants
    assert 0 == gov.counters.waits


async def test_a_slot_is_held_one_period_plus_margin_after_the_answer() -> None:
    """The fourth call waits until the first answer plus period plus margin."""
    gov = governor(3)
    sends: list[float] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lambda: call(gov, latency=2.0, log=sends))
    await call(gov, log=sends)
    assert [0.0, 0.0, 0.0] == sends[:3]
    assert pytest.approx(2.0 + HOLD) == sends[3]


async def test_leaving_before_sending_frees_the_slot() -> None:
    """A permit left without sending() costs nothing."""
    gov = governor(1)
    async with gov.permit("tok", JSON):
        pass
    await call(gov)
    assert 0.0 == anyio.current_time()
    snap = gov.snapshot().buckets["tok/json_resources_entreprise"]
    assert 1 == snap.in_period
    assert 0 == snap.in_flight


async def test_leaving_after_sending_keeps_the_slot_even_on_error() -> None:
    """A call that left counts, whatever happened after (timeout, local error)."""
    gov = governor(1)

    async def failing() -> None:
        async with gov.permit("tok", JSON) as permit:
            permit.sending()
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await failing()
    await call(gov)
    assert pytest.approx(HOLD) == anyio.current_time()


async def test_waiters_are_served_in_order() -> None:
    """FIFO within a bucket."""
    gov = governor(1)
    order: list[int] = []

    async def one(i: int) -> None:
        async with gov.permit("tok", JSON) as permit:
            permit.sending()
            order.append(i)
            permit.observe(200, {})

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, i)
            await anyio.sleep(0.001)
    assert [0, 1, 2, 3, 4, 5] == order


async def test_a_cancelled_waiter_leaves_without_a_trace() -> None:
    """Cancelling a queued call neither leaks nor consumes a slot."""
    gov = governor(1)
    sends: list[float] = []
    await call(gov, log=sends)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: call(gov, log=sends))
            await anyio.sleep(1.0)
            scope.cancel()
    await call(gov, log=sends)
    assert [0.0, pytest.approx(HOLD)] == sends
    snap = gov.snapshot().buckets["tok/json_resources_entreprise"]
    assert (0, 0) == (snap.queued, snap.in_flight)


async def test_ten_thousand_waiters_drain_with_one_wakeup_per_grant() -> None:
    """No thundering herd: each grant costs about one wake-up."""
    gov = governor(250)
    async with anyio.create_task_group() as tg:
        for _ in range(10_000):
            tg.start_soon(call, gov)
    counters = gov.counters
    assert 10_000 == counters.grants
    assert counters.wakeups <= 1.05 * counters.waits
    # 40 rounds of 250, the first at once.
    assert pytest.approx(39 * HOLD) == anyio.current_time()


async def test_ten_thousand_cancelled_waiters_leave_cleanly() -> None:
    """Mass cancellation leaves the queue empty and the next call on time."""
    gov = governor(1)
    await call(gov)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            for _ in range(10_000):
                tg.start_soon(call, gov)
            await anyio.sleep(1.0)
            scope.cancel()
    assert 1.0 == anyio.current_time()
    await call(gov)
    assert pytest.approx(HOLD) == anyio.current_time()
    assert 0 == gov.snapshot().buckets["ip"].queued
    assert 2 == gov.counters.grants


async def test_max_wait_refuses_at_once_with_the_exact_retry_after() -> None:
    """A slot known to come too late is refused now, nothing spent."""
    gov = governor(2)
    await call(gov, latency=1.0)
    await call(gov)
    with pytest.raises(RateLimitError) as info:
        async with gov.permit("tok", JSON, max_wait=5.0):
            pass
    assert 1.0 == anyio.current_time()
    assert info.value.local
    assert pytest.approx(HOLD) == info.value.retry_after
    assert 1 == gov.counters.rejections
    async with gov.permit("tok", JSON, max_wait=HOLD) as permit:
        permit.sending()
    assert pytest.approx(1.0 + HOLD) == anyio.current_time()


async def test_max_wait_is_a_deadline_while_an_answer_is_awaited() -> None:
    """Blocked by a call in flight, a waiter gives up at its deadline."""
    gov = governor(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: call(gov, latency=30.0))
        await anyio.sleep(1.0)
        # The estimate assumes the call in flight answers now: 10.05 s, within 12 s.
        with pytest.raises(RateLimitError) as info:
            async with gov.permit("tok", JSON, max_wait=12.0):
                pass
        assert 13.0 == anyio.current_time()
        assert info.value.retry_after is not None
        assert info.value.retry_after >= HOLD


async def test_a_429_pauses_the_bucket_until_retry_after_plus_margin() -> None:
    """Nothing is granted into a bucket paused by a 429."""
    gov = governor(100)
    await call(gov, status=429, answer={"Retry-After": "7"})
    sends: list[float] = []
    await call(gov, log=sends)
    assert [pytest.approx(7.0 + PERIOD * 0.005)] == sends
    assert 1 == gov.counters.rate_limited


async def test_a_granted_permit_may_not_send_into_a_paused_bucket() -> None:
    """sending() refuses after a 429 came back between grant and send."""
    gov = governor(100)
    async with gov.permit("tok", JSON) as early:
        await call(gov, status=429, answer={"Retry-After": "4.5"})
        with pytest.raises(RateLimitError) as info:
            early.sending()
    assert info.value.local
    assert pytest.approx(4.5 + 0.05) == info.value.retry_after


async def test_retry_after_as_an_http_date() -> None:
    """Retry-After may be an HTTP date, read with the wall clock."""
    gov = governor(100)
    date = formatdate(EPOCH + 20.0, usegmt=True)
    await call(gov, status=429, answer={"Retry-After": date})
    sends: list[float] = []
    await call(gov, log=sends)
    assert pytest.approx(20.05) == sends[0]


@pytest.mark.parametrize(
    "answer",
    [
        {"RateLimit-Limit": "abc", "RateLimit-Remaining": "1", "RateLimit-Reset": "x"},
        {"RateLimit-Limit": "-3", "RateLimit-Remaining": "1", "RateLimit-Reset": "1"},
        {"RateLimit-Limit": "nan", "RateLimit-Remaining": "inf", "RateLimit-Reset": "1e999"},
        {"Retry-After": "soon"},
    ],
)
async def test_malformed_headers_are_ignored(answer: dict[str, str]) -> None:
    """Garbage in headers never crashes nor blocks."""
    gov = governor(2)
    await call(gov, answer=answer)
    await call(gov, answer=answer)
    assert 0.0 == anyio.current_time()


async def test_a_429_without_any_hint_pauses_one_period() -> None:
    """No Retry-After nor RateLimit-Reset: assume a whole window."""
    gov = governor(100)
    await call(gov, status=429)
    await call(gov)
    assert pytest.approx(PERIOD * 1.005) == anyio.current_time()


async def test_remaining_caps_the_bucket_until_reset() -> None:
    """Another consumer of the token shows only through Remaining: respect it."""
    gov = governor(250)
    sends: list[float] = []
    await call(gov, answer=headers(250, 2, 5.0), log=sends)
    for _ in range(3):
        await call(gov, log=sends)
    assert [0.0, 0.0, 0.0, pytest.approx(5.0 + 0.05)] == sends


async def test_remaining_counts_calls_still_in_flight() -> None:
    """Calls in flight when the answer came may not be counted yet: they use the cap."""
    gov = governor(250)
    sends: list[float] = []
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(lambda: call(gov, latency=2.0, log=sends))
        await anyio.sleep(1.0)  # a whole second: the Date header tells the server's clock exactly
        await call(gov, answer=headers(250, 3, 5.0), log=sends)
        await call(gov, log=sends)
    # Remaining 3 minus the 3 others in flight: nothing more before the reset.
    assert pytest.approx(1.0 + 5.0 + 0.05) == sends[-1]


async def test_reset_as_delta_seconds_is_understood() -> None:
    """A small RateLimit-Reset is delta-seconds, not an epoch."""
    gov = governor(250)
    answer = {"ratelimit-limit": "250", "ratelimit-remaining": "0", "ratelimit-reset": "2.5"}
    await call(gov, answer=answer)
    await call(gov)
    assert pytest.approx(2.5 + 0.05) == anyio.current_time()


async def test_the_server_limit_replaces_the_configured_one_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RateLimit-Limit wins over the configuration."""
    gov = governor(250)
    caplog.set_level(logging.WARNING, logger="apientreprise_async.governor")
    await call(gov, answer=headers(2, 1, PERIOD))
    await call(gov, answer=headers(2, 0, PERIOD))
    sends: list[float] = []
    await call(gov, log=sends)
    assert pytest.approx(PERIOD + 0.05) == sends[0]
    assert 2 == gov.snapshot().buckets["tok/json_resources_entreprise"].limit
    assert 1 == sum("replaces the configured 250" in r.getMessage() for r in caplog.records)


async def test_slow_start_sends_one_probe_then_the_rest() -> None:
    """Before the first answer, only one call is in flight."""
    gov = governor(250, slow_start=True)
    sends: list[float] = []
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(
                lambda: call(gov, latency=1.0, answer=headers(250, 249, PERIOD), log=sends)
            )
    assert [0.0, 1.0, 1.0, 1.0, 1.0] == sends


async def test_slow_start_learns_a_smaller_limit_from_the_probe() -> None:
    """A wrong guess of the limit costs no 429: the probe shows the real one."""
    gov = governor(250, slow_start=True)
    sends: list[float] = []

    async def one() -> None:
        async with gov.permit("tok", JSON) as permit:
            permit.sending()
            sends.append(anyio.current_time())
            await anyio.sleep(0.5)
            used = sum(1 for s in sends if s >= sends[0])
            permit.observe(200, headers(3, max(0, 3 - used), PERIOD - 0.5))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    # The probe, then the window's two last slots together: nobody else was seen on the token.
    assert [0.0, 0.5, 0.5] == sends[:3]
    assert sends[3] >= PERIOD


async def test_a_probe_leaving_unsent_hands_the_probe_on() -> None:
    """Slow start never deadlocks on a cancelled probe."""
    gov = governor(250, slow_start=True)
    async with gov.permit("tok", JSON):
        pass
    await call(gov, answer=headers(250, 249, PERIOD))
    await call(gov)
    assert 0.0 == anyio.current_time()


async def test_an_operation_showing_another_limit_gets_its_own_bucket() -> None:
    """A wrongly grouped operation moves out; the group keeps its pace."""
    gov = governor(250, slow_start=True)
    await call(gov, JSON, answer=headers(250, 249, PERIOD))
    await call(gov, OTHER, answer=headers(2, 1, PERIOD))
    sends: list[float] = []
    await call(gov, OTHER, log=sends)
    await call(gov, OTHER, log=sends)
    await call(gov, JSON)
    assert [0.0, pytest.approx(PERIOD + 0.05)] == sends
    buckets = gov.snapshot().buckets
    assert 2 == buckets["tok/json_resources_entreprise@2"].limit
    assert 250 == buckets["tok/json_resources_entreprise"].limit


async def test_overrides_give_an_operation_its_own_limit() -> None:
    """Limits.overrides by operation id."""
    gov = governor(250, overrides={"op_b": 1})
    await call(gov, OTHER)
    await call(gov, JSON)
    assert 0.0 == anyio.current_time()
    await call(gov, OTHER)
    assert pytest.approx(HOLD) == anyio.current_time()
    assert {"tok/op_b", "tok/json_resources_entreprise", "ip"} == set(gov.snapshot().buckets)


async def test_the_ip_bucket_binds_all_tokens_together() -> None:
    """Many tokens, one IP ceiling."""
    gov = governor(10, ip=4)
    sends: list[float] = []
    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(lambda i=i: call(gov, token=f"t{i % 3}", log=sends))
    assert 4 == sum(1 for s in sends if s < HOLD)
    assert 4 == sum(1 for s in sends if HOLD <= s < 2 * HOLD)
    assert pytest.approx(2 * HOLD) == max(sends)


async def test_a_token_waiting_on_the_ip_does_not_block_other_buckets_when_it_is_paused() -> None:
    """A bucket head steps out of the IP queue when its own bucket closes."""
    gov = governor(10, ip=2)
    await call(gov, token="a")
    await call(gov, token="b", status=429, answer={"Retry-After": "100"})
    sends: list[tuple[str, float]] = []

    async def one(token: str) -> None:
        async with gov.permit(token, JSON) as permit:
            permit.sending()
            sends.append((token, anyio.current_time()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "b")
        await anyio.sleep(0.001)
        tg.start_soon(one, "a")
    assert ("a", pytest.approx(HOLD)) == sends[0]
    assert "b" == sends[1][0]
    assert sends[1][1] >= 100.0


async def test_governors_on_one_backend_share_the_ip_bucket() -> None:
    """The IP bucket is keyed, not owned: governors sharing a backend share it."""
    backend = InMemoryBackend()
    limits = Limits(groups={"json_resources_entreprise": 10}, ip=2, period=PERIOD, slow_start=False)
    first = Governor(limits, backend=backend)
    second = Governor(limits, backend=backend)
    await call(first, token="a")
    await call(second, token="b")
    await call(first, token="c")
    assert pytest.approx(HOLD) == anyio.current_time()


async def test_the_default_governor_and_backend_are_process_wide() -> None:
    """Clients given no governor share one, and its IP bucket."""
    assert default_governor() is default_governor()
    assert Governor().backend is default_backend()
    assert isinstance(default_backend(), GovernorBackend)


async def test_snapshot_and_repr_describe_the_state() -> None:
    """Per bucket: limit, calls in the period, queue, next free time; counters."""
    gov = governor(2)
    await call(gov)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, gov)
        tg.start_soon(call, gov)
        await anyio.sleep(1.0)
        snap = gov.snapshot()
        bucket = snap.buckets["tok/json_resources_entreprise"]
        assert (2, 2, 1) == (bucket.limit, bucket.in_period, bucket.queued)
        assert pytest.approx(HOLD) == bucket.next_free
        assert "queued=1" in repr(gov)
        assert f"next_wakeup={HOLD:.3f}" in repr(gov)
    assert 3 == gov.snapshot().counters.grants
    assert math.isclose(gov.counters.wait_time, HOLD)


def test_limits_are_validated() -> None:
    """Nonsense limits fail early."""
    with pytest.raises(ValueError, match="period"):
        Limits(period=0)
    with pytest.raises(ValueError, match="margin"):
        Limits(margin=1.5)
    assert 60.0 * 1.005 == Limits().hold


async def test_a_new_call_never_overtakes_a_queued_one() -> None:
    """The uncontended fast path yields to a waiter woken but not yet run (FIFO)."""
    gov = governor(1)
    order: list[str] = []

    async def one(name: str) -> None:
        async with gov.permit("tok", JSON) as permit:
            permit.sending()
            order.append(name)

    held = gov.permit("tok", JSON)
    await held.__aenter__()
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "queued")
        await anyio.sleep(1.0)
        await held.__aexit__(None, None, None)  # unsent: the slot is free at once
        await one("new")
    assert ["queued", "new"] == order
    assert pytest.approx(1.0 + HOLD) == anyio.current_time()


async def test_a_cleared_backend_is_looked_up_again() -> None:
    """Routes cache their in-memory buckets only until the backend forgets them."""
    gov = governor(1)
    await call(gov)
    backend = gov.backend
    assert isinstance(backend, InMemoryBackend)
    backend.clear()
    await call(gov)
    assert 0.0 == anyio.current_time()
    assert 1 == gov.snapshot().buckets["tok/json_resources_entreprise"].in_period
    await call(gov)
    assert pytest.approx(HOLD) == anyio.current_time()


async def test_a_backend_overriding_acquire_is_always_asked() -> None:
    """The synchronous fast path is only for the in-memory backend as it is."""

    class Counting(InMemoryBackend):
        acquired = 0

        async def acquire(self, requests: Any) -> Any:
            self.acquired += 1
            return await super().acquire(requests)

    backend = Counting()
    gov = Governor(Limits(period=PERIOD, slow_start=False), backend=backend)
    await call(gov)
    await call(gov)
    assert 2 == backend.acquired


async def test_an_answer_without_rate_limit_headers_does_not_end_slow_start() -> None:
    """A 401 or a stub carries no usable RateLimit headers: the probe discipline holds."""
    gov = governor(250, slow_start=True)
    sends: list[float] = []
    answers = [
        (401, {}),
        (200, {"RateLimit-Limit": "many", "RateLimit-Remaining": "1", "RateLimit-Reset": "5"}),
    ]

    async def one() -> None:
        async with gov.permit("tok", JSON) as permit:
            permit.sending()
            sends.append(anyio.current_time())
            await anyio.sleep(1.0)
            status, answer = answers.pop(0) if answers else (200, headers(250, 200, PERIOD))
            permit.observe(status, answer)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    # Two answers without usable headers: still one call in flight; the third shows the limit.
    assert [0.0, 1.0, 2.0, 3.0, 3.0, 3.0] == sends
    assert gov.snapshot().buckets["tok/json_resources_entreprise"].confirmed


async def test_slow_start_trusts_the_configured_limit_after_three_blind_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server or stub that never sends RateLimit headers costs a short slow start only."""
    caplog.set_level(logging.WARNING, logger="apientreprise_async.governor")
    gov = governor(5, slow_start=True)
    sends: list[float] = []
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(lambda: call(gov, latency=1.0, log=sends))
    # Three probes one at a time, then the configured limit (5 per period) is trusted.
    assert [0.0, 1.0, 2.0, 3.0, 3.0] == sends[:5]
    assert sends[5] > PERIOD
    bucket = gov.snapshot().buckets["tok/json_resources_entreprise"]
    assert (5, False) == (bucket.limit, bucket.confirmed)  # trusted, never shown
    assert 1 == sum("without RateLimit headers" in r.getMessage() for r in caplog.records)
    # An answer with headers still corrects the trusted guess.
    await call(gov, answer=headers(3, 2, PERIOD))
    bucket = gov.snapshot().buckets["tok/json_resources_entreprise"]
    assert (3, True) == (bucket.limit, bucket.confirmed)
