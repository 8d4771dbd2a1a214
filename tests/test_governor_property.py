"""Property: whatever arrives, leaves or is cancelled, no server window counts more than its limit.

Each example runs a short virtual-time scenario on trio's MockClock against a
strict server (:class:`FakeServer`) whose clock is offset from ours by a random
amount and whose windows are aligned on its clock or opened by a first call.
Calls of random tokens arrive at random times; some are cancelled while
queued, between grant and send, on the way to the server or after it counted
them; some leave without sending; each travels a random time before the
server counts it and another before its answer is read; answers carry the
``RateLimit-*`` headers (and ``Date``) or nothing. The server must never
refuse a call (no window of a token's bucket, nor of the IP, counts more than
its limit), and nothing may be left behind.

The same holds with no header at all, as the spacing of the sends shows: any
``limit + 1`` consecutive sends span at least one period plus the margin.
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

from ._fake_throttle import FakeServer, json_endpoint, wall_clock

PERIOD = 10.0
JSON = "json_resources_entreprise"
ENDPOINT = json_endpoint("op_prop")

call_plan = st.tuples(
    st.floats(0, 40, allow_nan=False),  # arrival
    st.integers(0, 2),  # token
    st.sampled_from(["send", "send", "send", "unsent", "cancel"]),
    st.floats(0, 1, allow_nan=False),  # delay between grant and sending()
    st.floats(0, 3, allow_nan=False),  # travel before the server counts the call
    st.floats(0, 6, allow_nan=False),  # provider time and travel back
    st.floats(0, 20, allow_nan=False),  # cancel after (for "cancel")
    st.booleans(),  # the answer carries the RateLimit headers
)
Plan = tuple[float, int, str, float, float, float, float, bool]


def check_spacing(sends: list[float], limit: int, hold: float) -> None:
    """Any limit + 1 consecutive sends span at least ``hold``."""
    sends = sorted(sends)
    for first, last in zip(sends, sends[limit:], strict=False):
        assert last - first >= hold - 1e-9, (limit, sends)


def run_scenario(
    limits: Limits, server: FakeServer, plans: list[Plan]
) -> tuple[GovernorSnapshot, dict[str, list[float]]]:
    """Play ``plans`` through one governor against ``server``; the end state and the sends."""
    gov = Governor(limits, backend=InMemoryBackend(), wall_clock=wall_clock)
    sends: dict[str, list[float]] = defaultdict(list)

    async def one(plan: Plan) -> None:
        arrival, token, action, pre, up, down, cancel_after, with_headers = plan
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
                await anyio.sleep(up)
                status, headers = server.arrive(f"t{token}", ENDPOINT.operation_id, JSON)
                await anyio.sleep(down)
                permit.observe(status, headers if with_headers else {})

    async def scenario() -> GovernorSnapshot:
        with anyio.fail_after(100_000):  # a deadlock would fail here, in virtual time
            async with anyio.create_task_group() as tg:
                for plan in plans:
                    tg.start_soon(one, plan)
        return gov.snapshot()

    snapshot = anyio.run(
        scenario, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )
    return snapshot, sends


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    limit=st.integers(1, 5),
    ip=st.integers(1, 8),
    slow_start=st.booleans(),
    margin=st.sampled_from([0.001, 0.005, 0.1]),
    aligned=st.booleans(),
    offset=st.floats(-2 * PERIOD, 2 * PERIOD, allow_nan=False),
    date=st.booleans(),
    plans=st.lists(call_plan, max_size=24),
)
def test_no_server_window_ever_counts_more_than_the_limit(
    limit: int,
    ip: int,
    slow_start: bool,
    margin: float,
    aligned: bool,
    offset: float,
    date: bool,
    plans: list[Plan],
) -> None:
    """The invariant, over random offsets, latencies, alignments, cancellations and limits."""
    limits = Limits(
        groups={JSON: limit}, ip=ip, period=PERIOD, margin=margin, slow_start=slow_start
    )
    server = FakeServer(
        {JSON: limit},
        period=PERIOD,
        ip_limit=ip,
        aligned=aligned,
        clock_offset=offset,
        date=date,
    )
    snapshot, sends = run_scenario(limits, server, plans)
    assert 0 == server.rejected, server.rejected_per_window
    assert 0 == server.ip_overflows
    # The IP bucket hears nothing from the headers: its sends keep the spacing.
    check_spacing(sends["ip"], ip, limits.hold)
    if not any(plan[7] for plan in plans):
        for key, times in sends.items():
            check_spacing(times, ip if key == "ip" else limit, limits.hold)
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
