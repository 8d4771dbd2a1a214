"""Property: whatever arrives, leaves or is cancelled, no bucket sends more than its limit per period.

Each example runs a short virtual-time scenario on trio's MockClock: calls of
random tokens arrive at random times, some are cancelled while queued, between
grant and send, or in flight, some leave without sending, and answers come
back after random latencies. The send times (``sending()``) are then checked:
in every bucket, and in the IP bucket, any ``limit + 1`` consecutive sends
span at least one period plus the margin. And nothing is left behind.
"""

from __future__ import annotations

import math
from collections import defaultdict

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from apientreprise_async._governor import Governor, GovernorSnapshot, Limits
from apientreprise_async.backends import InMemoryBackend

from ._fake_throttle import EPOCH, json_endpoint, wall_clock

PERIOD = 10.0
ENDPOINT = json_endpoint("op_prop")

call_plan = st.tuples(
    st.floats(0, 40, allow_nan=False),  # arrival
    st.integers(0, 2),  # token
    st.sampled_from(["send", "send", "send", "unsent", "cancel"]),
    st.floats(0, 1, allow_nan=False),  # delay between grant and sending()
    st.floats(0, 6, allow_nan=False),  # latency of the answer
    st.floats(0, 20, allow_nan=False),  # cancel after (for "cancel")
    st.booleans(),  # answer with RateLimit headers
)


def check_spacing(sends: list[float], limit: int, hold: float) -> None:
    """Any limit + 1 consecutive sends span at least ``hold``."""
    sends = sorted(sends)
    for first, last in zip(sends, sends[limit:], strict=False):
        assert last - first >= hold - 1e-9, (limit, sends)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    limit=st.integers(1, 5),
    ip=st.integers(1, 8),
    slow_start=st.booleans(),
    margin=st.sampled_from([0.0, 0.005, 0.1]),
    plans=st.lists(call_plan, max_size=24),
)
def test_no_bucket_ever_exceeds_its_limit(
    limit: int,
    ip: int,
    slow_start: bool,
    margin: float,
    plans: list[tuple[float, int, str, float, float, float, bool]],
) -> None:
    """The invariant, over random arrivals, cancellations and limits."""
    limits = Limits(
        groups={"json_resources_entreprise": limit},
        ip=ip,
        period=PERIOD,
        margin=margin,
        slow_start=slow_start,
    )
    gov = Governor(limits, backend=InMemoryBackend(), wall_clock=wall_clock)
    sends: dict[str, list[float]] = defaultdict(list)

    async def one(plan: tuple[float, int, str, float, float, float, bool]) -> None:
        arrival, token, action, pre, latency, cancel_after, with_headers = plan
        await anyio.sleep(arrival)
        with anyio.move_on_after(cancel_after if action == "cancel" else math.inf):
            async with gov.permit(f"t{token}", ENDPOINT) as permit:
                await anyio.sleep(pre)
                if action == "unsent":
                    return
                permit.sending()
                now = anyio.current_time()
                sends[f"t{token}"].append(now)
                sends["ip"].append(now)
                await anyio.sleep(latency)
                headers = {}
                if with_headers:
                    headers = {
                        "ratelimit-limit": str(limit),
                        "ratelimit-remaining": str(limit),
                        "ratelimit-reset": str(EPOCH + anyio.current_time() + PERIOD),
                    }
                permit.observe(200, headers)

    async def scenario() -> GovernorSnapshot:
        with anyio.fail_after(100_000):  # a deadlock would fail here, in virtual time
            async with anyio.create_task_group() as tg:
                for plan in plans:
                    tg.start_soon(one, plan)
        return gov.snapshot()

    snapshot = anyio.run(
        scenario, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )
    hold = limits.hold
    for key, times in sends.items():
        check_spacing(times, ip if key == "ip" else limit, hold)
    for bucket in snapshot.buckets.values():
        assert 0 == bucket.in_flight
        assert 0 == bucket.queued
    # Every call not cancelled got its permit; cancelled ones at most that.
    not_cancelled = sum(1 for plan in plans if plan[2] != "cancel")
    assert not_cancelled <= snapshot.counters.grants <= len(plans)


@pytest.mark.parametrize("limit", [1, 3])
def test_spacing_check_catches_a_burst(limit: int) -> None:
    """The checker itself fails on limit + 1 sends inside one period."""
    with pytest.raises(AssertionError):
        check_spacing([0.0] * (limit + 1), limit, 1.0)
